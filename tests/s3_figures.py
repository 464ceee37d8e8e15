"""Issue figures for object storage, measured on a real S3 endpoint (moto_server on loopback).

    python -m tests.s3_figures [--photos 200]

Prints one JSON line: S3->S3 throughput against local->local for the same assets (same process,
same config, in-process engine), the re-run time with nothing changed per 1,000 assets, and the
driver's peak traced memory while listing 5,000 and 50,000 keys.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import boto3
import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from s3server import DUMMY_AWS_ENV, moto_s3_server  # noqa: E402

from anon_ray.config import AppConfig, StorageConfig
from anon_ray.io import s3
from anon_ray.run import job
from anon_ray.run.local import run_local

SAMPLES = Path(__file__).resolve().parent.parent / "anon_ray" / "samples"


def _cfg(src: str, dst: str, storage_cfg: StorageConfig) -> AppConfig:
    cfg = AppConfig(input=src, output=dst, storage=storage_cfg)
    return replace(cfg, detect=replace(cfg.detect, plate=replace(cfg.detect.plate, enabled=False)))


def _timed_run(cfg: AppConfig) -> tuple[float, job.Summary]:
    t0 = time.perf_counter()
    summary = job.run(cfg, run_local, out=open(os.devnull, "w"))
    return time.perf_counter() - t0, summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--listing", type=int, nargs="*", default=[5000, 50000])
    args = parser.parse_args()
    os.environ.update(DUMMY_AWS_ENV)
    out: dict = {"photos": args.photos, "videos": 2}
    with moto_s3_server() as url, tempfile.TemporaryDirectory() as tmp:
        scfg = StorageConfig(endpoint_url=url, region="us-east-1", scratch_dir=os.path.join(tmp, "scratch"))
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        client.create_bucket(Bucket="archive")
        local_in = Path(tmp, "in")
        astro = cv2.imread(str(SAMPLES / "astronaut.jpg"))
        for i in range(args.photos):
            rel = f"day{i % 7}/p{i:05d}.jpg"
            data = cv2.imencode(".jpg", cv2.resize(astro, (320 + i % 64, 240 + i % 48)))[1].tobytes()
            (local_in / rel).parent.mkdir(parents=True, exist_ok=True)
            (local_in / rel).write_bytes(data)
            client.put_object(Bucket="archive", Key=f"in/{rel}", Body=data)
        for name in ("a.mp4", "b.mp4"):
            data = (SAMPLES / "astronaut_pan.mp4").read_bytes()
            (local_in / "videos").mkdir(exist_ok=True)
            (local_in / "videos" / name).write_bytes(data)
            client.put_object(Bucket="archive", Key=f"in/videos/{name}", Body=data)
        local_s, local_sum = _timed_run(_cfg(str(local_in), os.path.join(tmp, "out"), scfg))
        s3_s, s3_sum = _timed_run(_cfg("s3://archive/in", "s3://archive/out", scfg))
        rerun_s, rerun_sum = _timed_run(_cfg("s3://archive/in", "s3://archive/out", scfg))
        assert local_sum.ok == s3_sum.ok == args.photos + 2 and rerun_sum.skipped == args.photos + 2
        n = args.photos + 2
        out.update(local_seconds=local_s, s3_seconds=s3_s, s3_to_local_throughput=local_s / s3_s,
                   rerun_seconds=rerun_s, rerun_seconds_per_1000_assets=1000 * rerun_s / n)
        client.create_bucket(Bucket="listing")
        out["listing_peak_traced_mib"] = {}
        done = 0
        for target in sorted(args.listing):
            # Keys accumulate: each size adds only the difference.
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda i: client.put_object(Bucket="listing", Key=f"k/{i:06d}.jpg", Body=b"x"),
                              range(done, target)))
            done = target
            tracemalloc.start()
            count = sum(1 for _ in s3.list_s3("s3://listing/k", scfg))
            out["listing_peak_traced_mib"][target] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            assert count == target
    print(json.dumps(out))


if __name__ == "__main__":
    main()
