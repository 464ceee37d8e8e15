"""Issue figure for re-rendering: a clip's job run against the re-render of one correction.

    python -m tests.review_figures CLIP [WORKDIR]

Copies CLIP into WORKDIR/in, runs the job on it (default config with review.boxes=true, the
engine `anon-ray` picks: in process for a clip no longer than a segment), writes an overrides
file adding one region on every frame, and times anon-ray-rerender on it. Prints one JSON line.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from anon_ray.config import AppConfig, ReviewConfig
from anon_ray.io import review
from anon_ray.run import engine, job, rerender


def main(clip: Path, work: Path) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    (work / "in").mkdir(parents=True)
    shutil.copy(clip, work / "in" / clip.name)
    cfg = replace(AppConfig(input=str(work / "in"), output=str(work / "out")), review=ReviewConfig(boxes=True))
    t0 = time.perf_counter()
    first = job.run(cfg, engine.run_assets, out=io.StringIO())
    t_job = time.perf_counter() - t0
    overrides = Path(review.overrides_uri(cfg.output, clip.name))
    overrides.parent.mkdir(parents=True)
    overrides.write_text(json.dumps({"version": 1, "add": [{"box": [40, 40, 240, 120]}]}))
    t0 = time.perf_counter()
    again = rerender.rerender(cfg, io.StringIO())
    t_again = time.perf_counter() - t0
    return {"clip": clip.name, "job_ok": first.ok, "job_s": round(t_job, 2), "rerender_ok": again.ok,
            "rerender_s": round(t_again, 2), "ratio": round(t_again / t_job, 3)}


if __name__ == "__main__":
    work = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp(prefix="review_figures"))
    print(json.dumps(main(Path(sys.argv[1]), work)))
