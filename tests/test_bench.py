"""anon-ray-bench's memory phase, run briefly through its command line as the README gives it, so
the phase cannot silently break again (it once read a sample from a folder that had moved)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO


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
