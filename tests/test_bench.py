"""anon-ray-bench run briefly through its command line as the README gives it, so its phases cannot
silently break again (the memory phase once read a sample from a folder that had moved), and the
stage seconds its profile is made of."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, SAMPLES, composed

from anon_ray.tools.deface_ref import manifest_stages


def test_memory_phase_runs_from_the_command_line():
    # 3 s of 1080p at 5 fps: a worker process and a finalize process, each measured on its own.
    proc = subprocess.run(
        [sys.executable, "-c", "from anon_ray.cli import bench_main; bench_main()",
         "memory_minutes=[0.05]", "detect=faces_only"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    worker = result["memory_worker_peak_rss_mb"]["0.05"]
    finalize = result["memory_finalize_peak_rss_mb"]["0.05"]
    # A worker holds ONNX Runtime, the face model and 1080p frames; finalize only PyAV and Arrow.
    assert 300 < worker < 4000, result
    assert 50 < finalize < worker, result
    assert result["memory_fps"] == 5


def test_profile_of_the_in_process_job(tmp_path):
    """Where a clip's time goes: every stage of the path has seconds, the shares add up to one."""
    proc = subprocess.run(
        [sys.executable, "-c", "from anon_ray.cli import bench_main; bench_main()",
         f"input={SAMPLES / 'astronaut_pan.mp4'}", "frames=30", "reference=false", "detect=faces_only"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # The job does all the floor does and detects, tracks and masks besides.
    assert result["cpu_ms_per_frame"] > result["floor_cpu_ms_per_frame"] > 0, result
    assert result["cpu_ratio_to_floor"] == pytest.approx(result["floor_cpu_ms_per_frame"] / result["cpu_ms_per_frame"])
    profile = result["profile_in_process"]
    shares = profile["shares"]
    assert {"plan", "decode", "detect", "camera", "track", "mask", "encode", "finalize"} <= set(shares)
    assert "decode_again" not in shares  # a 640x360 clip's owned frames are held for the encoder (run/held.py)
    assert abs(sum(shares.values()) - 1) < 0.01 and shares["detect"] == max(shares.values()), profile
    assert 0 < profile["workers_busy"] <= 1 and 0 < profile["cores_busy"] <= 1, profile


def test_stage_seconds_reach_the_manifest(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "anon_ray", f"input={SAMPLES / 'astronaut.jpg'}", f"output={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    stages = manifest_stages(str(out))
    assert {"read", "detect", "people", "mask", "write", "wall", "cpu"} == set(stages), stages
    assert stages["detect"] > stages["mask"] and stages["wall"] >= stages["detect"], stages


def test_peak_rss_reads_an_exited_child_as_zero_instead_of_raising():
    """A child that exits between being listed and being read must not end the sampling thread."""
    import psutil

    from anon_ray.tools.bench import _rss

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    listed = psutil.Process(child.pid)
    assert _rss(listed) > 0
    child.kill()
    child.wait()
    assert _rss(listed) == 0


def test_peak_rss_counts_a_child_started_while_it_samples():
    """Children are listed every CHILDREN_EVERY_S, not on every sample: one started mid-phase that
    holds 400 MB for a few seconds still reaches the peak."""
    import time

    import psutil

    from anon_ray.tools.bench import CHILDREN_EVERY_S, PeakRSS

    own = psutil.Process().memory_info().rss
    hold = "import time; b = bytearray(400 << 20); b[::4096] = b'x' * len(b[::4096]); time.sleep(3 * %r)"
    with PeakRSS() as rss:
        time.sleep(0.1)
        subprocess.run([sys.executable, "-c", hold % CHILDREN_EVERY_S], check=True, timeout=60)
    assert rss.peak - own > 400 << 20, (rss.peak, own)


def test_a_race_counts_the_cpu_of_every_thread_of_the_process_it_times():
    """Assets in threads of one process each record all of its CPU (run/local.py): the bench takes
    the process's own CPU for such a race, here two threads each spinning ~0.4 s."""
    from anon_ray.tools.bench import profile
    from anon_ray.tools.deface_ref import timed_process_cpu

    spin = ("import threading, time\n"
            "def spin():\n"
            "    t = time.thread_time()\n"
            "    while time.thread_time() - t < 0.4: pass\n"
            "ts = [threading.Thread(target=spin) for _ in range(2)]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\n")
    seconds, cpu = timed_process_cpu([sys.executable, "-c", spin])
    assert 0.8 <= cpu < 0.8 + seconds, (seconds, cpu)
    stages = {"detect": 2.0, "wall": 4.0, "cpu": 8.0}  # two assets, each counting the other's CPU too
    cores = os.cpu_count() or 1
    assert profile(stages, 2.0, 2)["cores_busy"] == round(8.0 / (2.0 * cores), 3)
    assert profile(stages, 2.0, 2, cpu_s=4.0)["cores_busy"] == round(4.0 / (2.0 * cores), 3)


def test_the_fastest_of_alternating_floor_and_job_runs_counts(monkeypatch):
    """runs=3: floor and job alternate, each keeps its fastest run, the job with that run's stages."""
    from anon_ray.tools import bench

    times = iter([5.0, 14.0, 4.0, 15.0, 4.5, 12.0])  # floor, job, floor, job, ...
    calls = []

    def fake_timed(fn):
        frames = fn()
        return {"frames": frames, "seconds": next(times)}

    def fake_job(src, out_dir, cfg, stages):
        calls.append(out_dir)
        stages["detect"] = float(len(calls))
        return 10

    monkeypatch.setattr(bench, "timed", fake_timed)
    monkeypatch.setattr(bench, "floor_phase", lambda *a: 10)
    monkeypatch.setattr(bench, "job_phase", fake_job)
    cfg = composed("bench", runs=3)
    floor, job, stages = bench.floor_and_job("in.mp4", "/tmp", cfg, 10)
    assert (floor["seconds"], job["seconds"], stages) == (4.0, 12.0, {"detect": 3.0})
    assert len(set(calls)) == 3  # each job run writes into a folder of its own
