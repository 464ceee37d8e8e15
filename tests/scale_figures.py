"""Issue figures for scale on paper: the driver at 1,000,000 listed assets, and a 24 h video's plan.

    python -m tests.scale_figures [--assets 1000000] [--hours 24] [--scenario all]

Each driver scenario runs in a fresh child process and reports its peak RSS (ru_maxrss), the
interpreter and imports included:
- `first`: a fake listing of N photos, every one new, an engine that returns at once: the
  listing, skip checks, manifest chunks, and at close the fold of the run's chunks and its skip index;
- `rerun`: the same N again over what the first run left: its saved skip index, N skips and their rows;
- `report`: `anon-ray-report` of what both runs left (2 N rows), reduced as it is read;
- `review`: anon-ray-review's queue over the same: its first page, then an asset of its last.
`plan24h`: a packet index of a 24 h 29.97 fps recording with packet positions (2-second GOPs), cut
by the default segment config: plan_segments time, the plan's size as Ray ships it once, and the
packet scan's rate on a real mp4 so the scan of such a file can be read beside it; then the job's
planning (lifecycle.plan_video: index from the sample tables, probe, segments) of a real 24 h MP4
whose frames are tiny (its tables are a 24 h recording's).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from anon_ray.config import AppConfig, SegmentConfig
from anon_ray.core.plan import plan_segments
from anon_ray.io import storage
# The driver of a cluster run imports the Ray engine (ray, pyarrow, boto3) but no detector or
# codec: the baseline and driver figures count what it imports, the plan figure imports the rest.
from anon_ray.run import distributed, job  # noqa: F401
from anon_ray.types import Asset, AssetResult, PacketIndex, VideoInfo, VideoPlan

HAMILTON = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "eval" / "videos" / "short_hamilton_clip.mp4"


def _fake_listing(n: int):
    def list_assets(input_uri, cfg, exclude=None):
        for i in range(n):  # S3 key order: zero-padded names
            rel = f"site-{i // 10_000:03d}/cam-{i % 97:02d}/{i:09d}.jpg"
            yield Asset(uri=f"s3://archive/in/{rel}", relpath=rel, size=1_500_000 + i % 1000,
                        version=f"{i:032x}", kind="image")
    return list_assets


def _instant_engine(cfg, items, run_id):
    for asset, dst in items:
        yield AssetResult(asset, dst, faces=1, frames=1, seconds=0.01, input_sha256="0" * 64,
                          output_sha256="1" * 64, output_size=asset.size)


def driver(n: int, out: str, rerun: bool) -> dict:
    storage.list_assets = _fake_listing(n)
    # Outputs of the fake listing are not written; a re-run is told they exist (the merge against
    # the output listing, storage.OutputIndex, streams and holds one key).
    storage.output_index = lambda *a: (lambda asset, dst: True)
    job.model_hashes = lambda cfg: {"scrfd_10g": "0" * 64}  # no weights needed to hash a config
    cfg = AppConfig(input="s3://archive/in", output=out)
    started = time.time()
    summary = job.run(cfg, _instant_engine, out=open("/dev/null", "w"))
    return {"seconds": round(time.time() - started, 1), "ok": summary.ok, "skipped": summary.skipped,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def report_figure(out: str) -> dict:
    from anon_ray.tools import report

    started = time.time()
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        assert report.main([f"output={out}"]) == 0
    return {"seconds": round(time.time() - started, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def review_figure(out: str) -> dict:
    """The review page's queue over what both runs left: its first page, and one asset's row."""
    from anon_ray.tools.review_server import Review

    started = time.time()
    api = Review(AppConfig(output=out))
    total = api.queue(0, 200)["total"]
    queued = round(time.time() - started, 1)
    started = time.time()
    api._row(api.queue(total - 1, 1)["items"][0]["relpath"])  # the last page's asset, found by name (frames, boxes)
    return {"seconds": queued, "last_page_seconds": round(time.time() - started, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def baseline() -> dict:
    return {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def plan24h(hours: float) -> dict:
    n = int(hours * 3600 * 30000 / 1001)
    gop = 60
    rng = np.random.default_rng(0)
    size = np.where(np.arange(n) % gop == 0, 120_000, rng.integers(8_000, 30_000, n)).astype(np.int64)
    pos = np.concatenate([[48], 48 + np.cumsum(size[:-1])]).astype(np.int64)
    index = PacketIndex(pts=np.arange(n, dtype=np.int64) * 1001, key=np.arange(n) % gop == 0,
                        time_base_num=1, time_base_den=30000, pos=pos, size=size)
    started = time.perf_counter()
    segs = plan_segments("cam.mp4", index, 30000 / 1001, SegmentConfig(), workers=64)
    plan_s = time.perf_counter() - started
    info = VideoInfo(width=1920, height=1080, rotation=0, fps=(30000, 1001), time_base=(1, 30000), n_frames=n,
                     duration_s=n * 1001 / 30000, pix_fmt="yuv420p", codec="h264", color_range=0, color_primaries=2,
                     color_trc=2, colorspace=2, audio_streams=1, subtitle_streams=0, start_pts=0,
                     container="mov,mp4,m4a,3gp,3g2,mj2")
    vplan = VideoPlan(info=info, index=dataclasses.replace(index, pos=None, size=None), segments=tuple(segs))
    shipped = len(pickle.dumps(vplan, protocol=5))
    figures = {"frames": n, "segments": len(segs), "file_gb": round(float(pos[-1] + size[-1]) / 1e9, 2),
               "plan_segments_s": round(plan_s, 3), "plan_pickled_mb": round(shipped / 1e6, 1),
               "max_span_mb": round(max(s.byte_end - s.byte_start for s in segs) / 1e6, 1)}
    if HAMILTON.is_file():
        from anon_ray.media.packets import scan_packets
        started = time.perf_counter()
        frames = len(scan_packets(str(HAMILTON)))
        rate = frames / (time.perf_counter() - started)
        figures.update(scan_packets_per_s=round(rate), scan_24h_s_estimate=round(n / rate, 1))
    from anon_ray.run import lifecycle

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "cam.mp4")
        _long_mp4(path, n)
        started = time.perf_counter()
        vplan = lifecycle.plan_video(path, "cam.mp4", AppConfig(), workers=64)
        figures.update(mp4_frames=vplan.info.n_frames, mp4_segments=len(vplan.segments),
                       mp4_mb=round(Path(path).stat().st_size / 1e6, 1),
                       plan_video_s=round(time.perf_counter() - started, 2))
    return figures


def _long_mp4(path: str, frames: int, gop: int = 60) -> None:
    """An MP4 of `frames` 29.97 fps frames (2-second GOPs), a tiny clip's packets repeated: its
    sample tables are a 24 h recording's, its media data ~50 bytes a frame."""
    import av

    clip = path + ".clip.mp4"
    with av.open(clip, "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(30000, 1001),
                                options={"g": str(gop), "bf": "0", "preset": "ultrafast", "crf": "40"})
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for i in range(gop):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 4, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with av.open(clip) as src, av.open(path, "w") as out:
        source = src.streams.video[0]
        packets = [(bytes(p), p.is_keyframe) for p in src.demux(source) if p.size]
        stream = out.add_stream_from_template(source)
        stream.time_base = Fraction(1, 30000)
        for i in range(frames):
            data, key = packets[i % len(packets)]
            packet = av.Packet(data)
            packet.pts = packet.dts = i * 1001
            packet.duration, packet.is_keyframe, packet.stream, packet.time_base = 1001, key, stream, stream.time_base
            out.mux(packet)


def _call(scenario: str, n: int, out: str, hours: float) -> str:
    if scenario in ("first", "rerun"):
        return f"driver({n}, {out!r}, {scenario == 'rerun'})"
    return {"baseline": "baseline()", "plan24h": f"plan24h({hours!r})", "report": f"report_figure({out!r})",
            "review": f"review_figure({out!r})"}[scenario]


def child(scenario: str, n: int, out: str, hours: float) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import scale_figures as s; "
            f"print(json.dumps(s.{_call(scenario, n, out, hours)}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--assets", type=int, default=1_000_000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--scenario", choices=["all", "first", "rerun", "report", "review", "plan24h"], default="all")
    args = parser.parse_args()
    figures: dict = {"assets": args.assets}
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "out")
        if args.scenario in ("all", "first", "rerun", "report", "review"):
            figures["baseline"] = child("baseline", 0, out, 0)
            figures["first"] = child("first", args.assets, out, 0)
        if args.scenario in ("all", "rerun", "report", "review"):
            figures["rerun"] = child("rerun", args.assets, out, 0)
        if args.scenario in ("all", "report"):
            figures["report"] = child("report", 0, out, 0)
        if args.scenario in ("all", "review"):
            figures["review"] = child("review", 0, out, 0)
        if args.scenario in ("all", "plan24h"):
            figures["plan24h"] = child("plan24h", 0, out, args.hours)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
