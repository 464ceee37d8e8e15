"""One source of defaults: the CLI's composed config equals the config classes' own defaults,
field by field, so plain Python (`Worker(AppConfig())`) masks exactly what `anon-ray` masks.
Also the layering rules of the package (one module imports Ray, one Hydra, only io/ knows S3)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import composed
from hydra.errors import ConfigCompositionException

from anon_ray.config import AppConfig, BenchConfig, EvalConfig, MaskMethod, MaskShape

PACKAGE = Path(__file__).resolve().parent.parent / "anon_ray"
# Where the job reads and writes: the CLI's embedded demo (sample media into demo_output/), not
# a safety setting; plain Python must name its own.
WHERE = {"input", "output"}


def differences(a, b, path: str = "") -> list[str]:
    """Every leaf field where two config trees differ, as 'path: a != b'."""
    if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
        out = [] if type(a) is type(b) else [f"{path or '.'}: {type(a).__name__} != {type(b).__name__}"]
        for f in dataclasses.fields(a):
            out += differences(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}" if path else f.name)
        return out
    same = a == b and type(a) is type(b) or (isinstance(a, float) and a == b)
    return [] if same else [f"{path}: {a!r} != {b!r}"]


@pytest.mark.parametrize("name, cls", [("config", AppConfig), ("eval", EvalConfig), ("bench", BenchConfig)])
def test_composed_defaults_are_the_config_classes_defaults(name, cls):
    cli = composed(name)
    diff = [d for d in differences(cli, cls()) if d.split(":")[0] not in WHERE]
    assert not diff, f"conf/{name}.yaml and anon_ray/config.py disagree:\n" + "\n".join(diff)


def test_the_comparison_sees_a_changed_default():
    cli = composed("config", **{"preset": "fast"})
    diff = differences(cli, AppConfig())
    assert "detect.plate.threshold: 0.2 != 0.04" in diff and "detect.face.tiling.enabled: False != True" in diff


def test_mask_method_and_shape_are_enums_checked_when_composed():
    cfg = composed("config", **{"mask": "pixelate", "mask.face_shape": "box"})
    assert cfg.mask.method is MaskMethod.pixelate and cfg.mask.face_shape is MaskShape.box and cfg.mask.blocks == 5
    for bad in ("mask.method=swirl", "mask.face_shape=circle", "mask.plate_shape=ellipses"):
        key, value = bad.split("=")
        with pytest.raises(ConfigCompositionException):
            composed("config", **{key: value})


def _modules_matching(pattern: str) -> list[str]:
    rx = re.compile(pattern, re.M)
    return sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if rx.search(p.read_text()))


def test_layering():
    assert _modules_matching(r"^\s*(import ray\b|from ray\b)") == ["run/distributed.py", "run/ray_metrics.py"]
    assert _modules_matching(r"^\s*(import hydra\b|from hydra\b)") == ["cli.py"]
    assert all(m.startswith("io/") for m in _modules_matching(r"\bis_s3\b")), _modules_matching(r"\bis_s3\b")
    assert all(m.startswith("io/") for m in _modules_matching(r"^\s*(import boto3|from botocore|from boto3)"))
    too_long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
                if (n := len(p.read_text().splitlines())) > 450}
    assert not too_long, too_long


def test_plan_and_finalize_load_no_detector():
    """Ray's light tasks import lifecycle in fresh workers, a video's first plan waiting on it: the
    detectors' modules (ONNX Runtime, onnx) and the tracker's assignment solver (scipy.optimize,
    ~0.6 s) stay out of it, and onnx out of the pipeline on CPUs that do not ask about int8
    saturation."""
    heavy = ("onnxruntime", "onnx", "anon_ray.run.pipeline", "anon_ray.detect", "scipy.optimize")
    code = f"import sys, anon_ray.{{}}; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    lifecycle = subprocess.run([sys.executable, "-c", code.format("run.lifecycle")], capture_output=True, text=True)
    assert lifecycle.stdout.strip() == "[]", lifecycle.stdout + lifecycle.stderr
    pipeline = subprocess.run([sys.executable, "-c", code.format("run.pipeline")], capture_output=True, text=True)
    assert pipeline.stdout.strip() == str(sorted(m for m in heavy if m not in ("onnx", "scipy.optimize"))), \
        pipeline.stdout + pipeline.stderr


def test_workers_on_cpus_without_vnni_load_no_onnx():
    """Workers on CPUs whose int8 sums saturate read every model's int8 weights themselves
    (models/onnx_int8.py): the onnx package would cost each ~0.9 s CPU before its first frame."""
    code = ("import sys; from anon_ray.detect import session; session.int8_saturates = lambda: True; "
            "from anon_ray.config import AppConfig; from anon_ray.run.pipeline import Worker; "
            "Worker(AppConfig()); print('onnx' in sys.modules)")
    worker = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert worker.stdout.strip() == "False", worker.stdout + worker.stderr


def test_bench_races_anon_ray_with_the_job_settings_only():
    from anon_ray.cli import job_overrides

    given = ["input=clip.mp4", "resize=1280x720", "detect=faces_only", "preset=fast", "frames=90",
             "mask.face_margin=0.3", "bulk_copies=2", "leak_dataset=faces", "+cluster.workers=1"]
    assert job_overrides(given) == ["detect=faces_only", "preset=fast", "mask.face_margin=0.3", "+cluster.workers=1"]
