"""Shared fixtures: the labelled evaluation set (read in place, never copied) and sample media."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import av
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from anon_ray.cli import CONF_DIR, _register
from anon_ray.media.encode import ordinary_scheduling

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "anon_ray" / "samples"


def composed(name: str, **overrides):
    """The config `name` (config | eval | bench) exactly as its entry point composes it, presets
    included, with Hydra-style `key=value` overrides."""
    _register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return OmegaConf.to_object(compose(name, overrides=[f"{k}={v}" for k, v in overrides.items()]))


def eval_root() -> Path:
    return Path(os.environ.get("ANON_RAY_EVAL_DATA", REPO.parent / "shared" / "data" / "eval"))


@pytest.fixture(scope="session")
def eval_data() -> Path:
    root = eval_root()
    if not (root / "faces" / "annotations.jsonl").is_file():
        pytest.fail(f"evaluation data not found at {root} (set ANON_RAY_EVAL_DATA)")
    return root


def annotations(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "annotations.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLES


@contextlib.contextmanager
def ordinary_scheduling_after():
    """Clips written here with SVT-AV1 leave the pytest process real-time otherwise (encode.ordinary_scheduling)."""
    try:
        yield
    finally:
        ordinary_scheduling()


@pytest.fixture(autouse=True)
def no_test_leaves_real_time_scheduling():
    yield
    policy = os.sched_getscheduler(0)
    if policy != os.SCHED_OTHER:
        ordinary_scheduling()
        pytest.fail(f"the test left the process in scheduling policy {policy} (see encode.ordinary_scheduling)")


def mux_stereo_tone(out, stream, samples: int) -> None:
    """A 48 kHz stereo tone of `samples` samples, encoded on `stream` and muxed into `out`."""
    tone = (0.3 * np.sin(np.arange(samples) / 7.0)).astype(np.float32)
    for k in range(0, samples, 1024):
        chunk = np.ascontiguousarray(np.repeat(tone[None, k:k + 1024], 2, axis=0))
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
        frame.sample_rate, frame.pts = 48000, k
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


@pytest.fixture
def plate_input_shapes(monkeypatch) -> list[tuple[int, int]]:
    """The (height, width) of every network input the plate detectors run, in order."""
    from anon_ray.detect import plates

    shapes: list[tuple[int, int]] = []
    real = plates.run_checked

    def recording(session, outputs, feed):
        shapes.append(next(iter(feed.values())).shape[2:])
        return real(session, outputs, feed)

    monkeypatch.setattr(plates, "run_checked", recording)
    return shapes


def manifest_rows(out: Path | str) -> list[dict]:
    """Every manifest row of a local output, oldest run first (io/manifest.py's layout)."""
    from anon_ray.config import StorageConfig
    from anon_ray.io.manifest import read_manifest

    return read_manifest(str(out), StorageConfig()).to_pylist()


def s3_manifest_rows(client, bucket: str, out_prefix: str) -> list[dict]:
    """Every manifest row of an output in a bucket, read with the test's own client: the runs'
    files under `<out_prefix>/_anon_ray/manifest/`, oldest first."""
    import io

    import pyarrow.parquet as pq

    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{out_prefix}/_anon_ray/manifest/")
    keys = sorted(o["Key"] for page in pages for o in page.get("Contents", []))
    return [row for key in keys
            for row in pq.read_table(io.BytesIO(client.get_object(Bucket=bucket, Key=key)["Body"].read())).to_pylist()]
