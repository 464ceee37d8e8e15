"""The reference peer as its users run it: the real deface 1.5.0 command line, in a virtualenv of
its own (`make deface`), at its defaults; and anon-ray's own command line beside it.

Both are timed whole process (start-up, model load, decode, detect, mask, encode, exit) on the same
files, in the same benchmark invocation, runs alternating so drift on a shared machine hits both.
deface's masks are read back from its outputs: on lossless PNG copies of the inputs, every pixel
it changed is masked (its default blur changes nearly every pixel of the ellipse it covers; holes
where a flat patch blurred onto itself are filled), so its protection is scored with the same rule
as anon-ray's (DESIGN.md section 5).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from anon_ray.config import StorageConfig
from anon_ray.io.manifest import read_manifest
from anon_ray.run import stages
from anon_ray.tools import metrics
from anon_ray.tools.evaluate import load_items

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFACE_VENV = REPO_ROOT / ".venv-deface"  # made by `make deface`, never the project's own virtualenv


def deface_executable(venv: str = "") -> str:
    path = Path(venv or DEFACE_VENV) / "bin" / "deface"
    if not path.is_file():
        raise SystemExit(f"anon-ray-bench: the reference needs the real deface at {path}: run `make deface` "
                         f"(or reference=false)")
    return str(path)


def timed_process(cmd: list[str], cwd: str | None = None) -> float:
    """Seconds the command takes from start to exit; its failure is the benchmark's failure."""
    return timed_process_cpu(cmd, cwd)[0]


def timed_process_cpu(cmd: list[str], cwd: str | None = None) -> tuple[float, float]:
    """timed_process, and the CPU seconds of the command's process (its threads; of the processes
    it starts, those it waits for: not a Ray cluster's workers)."""
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return seconds, _children_cpu() - cpu0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def deface_command(exe: str, inputs: list[str]) -> list[str]:
    # Its defaults: threshold 0.2, mask scale 1.3, ellipse blur, backend auto (OpenCV DNN without
    # onnxruntime installed, as `pip install deface` leaves it). Outputs go beside the inputs.
    return [exe, *inputs]


def anon_ray_command(input_dir: str, output_dir: str, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "anon_ray", f"input={input_dir}", f"output={output_dir}", *overrides]


def copies(src: str, folder: Path, n: int) -> list[str]:
    """`n` copies of `src` in a folder of their own (deface writes its outputs beside its inputs)."""
    folder.mkdir(parents=True, exist_ok=True)
    ext = os.path.splitext(src)[1]
    paths = [str(folder / f"copy{k}{ext}") for k in range(n)]
    for path in paths:
        shutil.copyfile(src, path)
    return paths


def race(src: str, tmp: Path, n_copies: int, runs: int, exe: str, overrides: list[str]) -> dict:
    """Whole-process seconds of anon-ray and of deface on `n_copies` copies of `src`, alternating."""
    seconds: dict[str, list[float]] = {"anon_ray": [], "deface": []}
    profiles, cpu = [], []
    for run in range(runs):
        base = tmp / f"race-{n_copies}-{run}"
        anon_in, deface_in = base / "anon_in", base / "deface_in"
        copies(src, anon_in, n_copies)
        inputs = copies(src, deface_in, n_copies)
        took, used = timed_process_cpu(anon_ray_command(str(anon_in), str(base / "anon_out"), overrides),
                                       cwd=str(REPO_ROOT))
        seconds["anon_ray"].append(took)
        cpu.append(used)
        profiles.append(manifest_stages(str(base / "anon_out")))
        seconds["deface"].append(timed_process(deface_command(exe, inputs)))
        shutil.rmtree(base, ignore_errors=True)
    best = {k: min(v) for k, v in seconds.items()}
    fastest = seconds["anon_ray"].index(best["anon_ray"])
    return {"files": n_copies, "runs": runs, "anon_ray_s": best["anon_ray"], "deface_s": best["deface"],
            "ratio": best["deface"] / best["anon_ray"], "anon_ray_stages": profiles[fastest],
            "anon_ray_cpu_s": cpu[fastest]}


def manifest_stages(output: str) -> dict[str, float]:
    """Busy seconds per stage over a run's assets, from its manifest (AssetRecord.stage_seconds)."""
    rows = read_manifest(output, StorageConfig(), ["stage_seconds"]).column("stage_seconds").to_pylist()
    return stages.summed(json.loads(row or "{}") for row in rows)


def changed_region(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    changed = (before != after).any(axis=2)
    return ndimage.binary_fill_holes(ndimage.binary_closing(changed, np.ones((5, 5), bool)))


def deface_leak(dataset: str, tmp: Path, exe: str, limit: int = 0) -> dict:
    """Protection of the real deface at its defaults on a labelled folder (faces)."""
    items = [i for i in load_items(dataset) if not i.is_video][: limit or None]
    folder = tmp / "deface_eval"
    folder.mkdir(parents=True, exist_ok=True)
    inputs = []
    for k, item in enumerate(items):
        rgb = cv2.imread(item.file, cv2.IMREAD_COLOR)
        path = folder / f"{k:05d}.png"
        cv2.imwrite(str(path), rgb)
        inputs.append(str(path))
    seconds = timed_process(deface_command(exe, inputs))
    agg = metrics.Aggregate()
    for item, path in zip(items, inputs):
        before = cv2.imread(path, cv2.IMREAD_COLOR)
        after = cv2.imread(path.replace(".png", "_anonymized.png"), cv2.IMREAD_COLOR)
        # deface's boxes are not in its output; recall/precision columns stay empty (no boxes).
        agg.add(metrics.score_image(item.gt, changed_region(before, after), np.zeros((0, 4)), item.tags))
    summary = agg.summary()
    return {"deface_leak_rate": summary["leak_rate"], "deface_leak_rate_ge16": summary["leak_rate_ge16"],
            "deface_over_masking": summary["over_masking"], "deface_images": len(items), "deface_eval_s": seconds}
