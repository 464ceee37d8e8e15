"""Which engine runs a job: this process for a few photos or short clips, Ray for the rest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from dataclasses import replace

import av
import cv2
import numpy as np
from conftest import REPO, SAMPLES

from anon_ray.config import AppConfig
from anon_ray.io.inventory import local_asset
from anon_ray.run import lifecycle
from anon_ray.run.engine import in_process
from anon_ray.run.job import StopRequest
from anon_ray.run.local import run_local


def _clip(path, seconds: float, fps: int = 10) -> None:
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i % 255, np.uint8), format="rgb24")
            frame.pts = i
            out.mux(v.encode(frame))
        out.mux(v.encode(None))


def test_only_a_few_local_photos_or_short_clips_on_an_embedded_cluster_run_in_process(tmp_path, monkeypatch):
    """At most 2 assets per worker, each a local photo or a clip no longer than a segment, the
    clips together no longer than a segment per worker."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    photo, short, long = tmp_path / "a.jpg", tmp_path / "short.mp4", tmp_path / "long.mp4"
    shutil.copy(SAMPLES / "astronaut.jpg", photo)
    _clip(short, 4.0)
    _clip(long, 12.0)
    cfg = AppConfig()
    cfg = replace(cfg, segment=replace(cfg.segment, seconds=10.0), cluster=replace(cfg.cluster, workers=2))
    one = lambda p: [(local_asset(str(p), p.name), str(tmp_path / "out" / p.name))]  # noqa: E731
    assert in_process(cfg, one(photo)) and in_process(cfg, one(short))
    assert not in_process(cfg, one(long))  # more than one segment: the pool cuts it across workers
    assert in_process(cfg, one(photo) + one(short) * 3) and in_process(cfg, one(short) * 4)  # 16 s <= 2 x 10 s
    assert not in_process(cfg, one(photo) * 5)  # more than 2 a worker
    assert not in_process(cfg, one(short) * 3 + one(long))
    six = replace(cfg, segment=replace(cfg.segment, seconds=6.0))
    assert in_process(six, one(short) * 3) and not in_process(six, one(short) * 4)  # 16 s > 2 x 6 s
    assert not in_process(replace(cfg, cluster=replace(cfg.cluster, workers=1)), one(photo) * 3)
    assert not in_process(cfg, [])
    assert not in_process(replace(cfg, cluster=replace(cfg.cluster, address="ray://head:10001")), one(photo))
    assert not in_process(replace(cfg, cluster=replace(cfg.cluster, inline=False)), one(photo))
    s3 = [(replace(one(photo)[0][0], uri="s3://b/in/a.jpg"), "s3://b/out/a.jpg")]
    assert not in_process(cfg, s3) and not in_process(cfg, one(photo) + s3)
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # a job submitted to a running cluster stays on it
    assert not in_process(cfg, one(photo))
    assert AppConfig().cluster.inline


def test_in_process_assets_run_at_once_each_on_a_worker_of_its_own(tmp_path, monkeypatch):
    """threads=2: two photos are masked at the same time (each waits for the other to start),
    by two workers whose ONNX Runtime threads share the cores; every asset gets its result."""
    seen: list[tuple[int, int]] = []
    both = threading.Barrier(2, timeout=60)
    real = lifecycle.image

    def image(worker, asset, dst, deadline):
        seen.append((id(worker), worker.cfg.detect.session.intra_op_threads))
        both.wait()  # broken (and the test failed) unless the other photo is under way too
        return real(worker, asset, dst, deadline)

    monkeypatch.setattr(lifecycle, "image", image)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    shutil.copy(SAMPLES / "astronaut.jpg", tmp_path / "a.jpg")
    shutil.copy(SAMPLES / "astronaut.jpg", tmp_path / "b.jpg")
    cfg = replace(AppConfig(), input=str(tmp_path), output=str(tmp_path / "out"))
    todo = [(local_asset(str(tmp_path / n), n), str(tmp_path / "out" / n)) for n in ("a.jpg", "b.jpg")]
    results = list(run_local(cfg, todo, "threads", threads=2))
    assert sorted(r.asset.relpath for r in results if not r.failure) == ["a.jpg", "b.jpg"]
    assert len({w for w, _ in seen}) == 2 and {t for _, t in seen} == {2}
    original = cv2.imread(str(tmp_path / "a.jpg"))
    assert (cv2.imread(str(tmp_path / "out" / "a.jpg")).astype(int) - original).any()


def test_cli_masks_short_clips_and_a_photo_without_starting_ray(tmp_path):
    """Two copies of the bundled clip and a photo: masked, their rows written, and no Ray session
    ever started."""
    src, out, ray_tmp = tmp_path / "in", tmp_path / "out", tmp_path / "ray"
    src.mkdir()
    shutil.copy(SAMPLES / "astronaut_pan.mp4", src / "clip.mp4")
    shutil.copy(SAMPLES / "astronaut_pan.mp4", src / "clip2.mp4")
    shutil.copy(SAMPLES / "astronaut.jpg", src / "a.jpg")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "anon_ray", f"input={src}", f"output={out}", "detect=faces_only"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env={**env, "RAY_TMPDIR": str(ray_tmp)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 ok, 0 failed" in proc.stderr and all((out / n).is_file() for n in ("clip.mp4", "clip2.mp4", "a.jpg"))
    assert not ray_tmp.exists()


def test_in_process_assets_are_not_started_once_a_stop_is_requested(tmp_path):
    """Of three photos on two threads, the third is not started after a stop requested while the
    first two are under way (the listing was already taken: engine.py); no rows, no outputs for it."""
    for n in ("a.jpg", "b.jpg", "c.jpg"):
        shutil.copy(SAMPLES / "astronaut.jpg", tmp_path / n)
    cfg = replace(AppConfig(), input=str(tmp_path), output=str(tmp_path / "out"))
    todo = [(local_asset(str(tmp_path / n), n), str(tmp_path / "out" / n)) for n in ("a.jpg", "b.jpg", "c.jpg")]
    stop = StopRequest()

    def listing():
        yield from todo[:2]
        stop.request()  # as the CLI's signal handler would, once two photos are under way
        yield todo[2]

    results = list(run_local(cfg, listing(), "stop", threads=2, stop=stop))
    assert sorted(r.asset.relpath for r in results) == ["a.jpg", "b.jpg"]
    assert not (tmp_path / "out" / "c.jpg").exists()
    assert not list(run_local(cfg, todo, "stopped", threads=1, stop=stop))
