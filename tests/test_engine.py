"""Which engine runs a job: this process for one photo or one short clip, Ray for the rest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace

import av
import numpy as np
from conftest import REPO, SAMPLES

from anon_ray.config import AppConfig
from anon_ray.io.inventory import local_asset
from anon_ray.run.engine import in_process


def _clip(path, seconds: float, fps: int = 10) -> None:
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i % 255, np.uint8), format="rgb24")
            frame.pts = i
            out.mux(v.encode(frame))
        out.mux(v.encode(None))


def test_only_one_local_photo_or_short_clip_on_an_embedded_cluster_runs_in_process(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    photo, short, long = tmp_path / "a.jpg", tmp_path / "short.mp4", tmp_path / "long.mp4"
    shutil.copy(SAMPLES / "astronaut.jpg", photo)
    _clip(short, 4.0)
    _clip(long, 12.0)
    cfg = AppConfig()
    cfg = replace(cfg, segment=replace(cfg.segment, seconds=10.0))
    one = lambda p: [(local_asset(str(p), p.name), str(tmp_path / "out" / p.name))]  # noqa: E731
    assert in_process(cfg, one(photo)) and in_process(cfg, one(short))
    assert not in_process(cfg, one(long))  # more than one segment: the pool cuts it across workers
    assert not in_process(cfg, one(photo) + one(short))
    assert not in_process(replace(cfg, cluster=replace(cfg.cluster, address="ray://head:10001")), one(photo))
    assert not in_process(replace(cfg, cluster=replace(cfg.cluster, inline=False)), one(photo))
    s3 = [(replace(one(photo)[0][0], uri="s3://b/in/a.jpg"), "s3://b/out/a.jpg")]
    assert not in_process(cfg, s3)
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # a job submitted to a running cluster stays on it
    assert not in_process(cfg, one(photo))
    assert AppConfig().cluster.inline


def test_cli_masks_one_short_clip_without_starting_ray(tmp_path):
    """The bundled clip alone: masked, its row written, and no Ray session ever started."""
    src, out, ray_tmp = tmp_path / "in", tmp_path / "out", tmp_path / "ray"
    src.mkdir()
    shutil.copy(SAMPLES / "astronaut_pan.mp4", src / "clip.mp4")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "anon_ray", f"input={src}", f"output={out}", "detect=faces_only"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env={**env, "RAY_TMPDIR": str(ray_tmp)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 ok, 0 failed" in proc.stderr and (out / "clip.mp4").is_file()
    assert not ray_tmp.exists()
