"""anon-ray-bench: speed and memory of the job, as ratios to references timed in the same run.

Phases, one after another in this process, each with its own peak-RSS sampler (the floor and the
job alternate `runs` times, the fastest of each counting):
  floor      decode + encode with the job's codec settings, no detection (the transcode floor)
  detect     decode + detection only (model cost per frame)
  job        the full single-process path: decode, detect, track, mask, encode, finalize
  reference  the real deface 1.5.0 command line at its defaults (tools/deface_ref.py) against the
             anon-ray command line, whole process, alternating, on one clip and on several copies
The last line is one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import psutil

from anon_ray.config import BenchConfig, SegmentConfig
from anon_ray.io.inventory import local_asset
from anon_ray.media import packets
from anon_ray.media.decode import decode
from anon_ray.media.encode import VideoWriter
from anon_ray.media.probe import probe
from anon_ray.run import engine, lifecycle
from anon_ray.run.local import run_local
from anon_ray.run.pipeline import Worker
from anon_ray.tools import deface_ref
from anon_ray.types import Failure

SAMPLES = Path(__file__).resolve().parent.parent / "samples"  # the package's demo media


# Listing a process's children scans every process of the machine: done on every 20 ms sample it
# took ~10% of a core (2-core VM, ~70 processes), taken from the phase being timed (the floor, whose
# x264 threads use both cores too, the more). Children (deface, Ray workers) live for seconds.
CHILDREN_EVERY_S = 0.5


class PeakRSS:
    """Samples this process's RSS (and its children's) every 20 ms while a phase runs; the list of
    children is renewed every CHILDREN_EVERY_S."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        proc = psutil.Process()
        children: list[psutil.Process] = []
        listed = -CHILDREN_EVERY_S
        while not self._stop.is_set():
            if time.monotonic() - listed >= CHILDREN_EVERY_S:
                children, listed = proc.children(recursive=True), time.monotonic()
            rss = proc.memory_info().rss + sum(_rss(c) for c in children)
            self.peak = max(self.peak, rss)
            self._stop.wait(0.02)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _rss(proc: psutil.Process) -> int:
    # A child (deface's, a Ray worker's) may exit between being listed and being read: it then
    # holds no memory, and must not end the sampling thread, whose peak would be left short.
    try:
        return proc.memory_info().rss
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


def timed(fn: Callable[[], int]) -> dict:
    """Frames, seconds and peak RSS of `fn`, and this process's CPU seconds meanwhile (every thread;
    the sampler's ~2% of a core included): on a VM whose speed drifts, CPU per frame against the
    floor's says more about the work than wall-clock time does."""
    with PeakRSS() as rss:
        t0, cpu0 = time.perf_counter(), time.process_time()
        frames = fn()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"frames": frames, "seconds": seconds, "fps": frames / seconds, "cpu_s": cpu,
            "peak_rss_mb": rss.peak / 2**20}


def floor_phase(src: str, dst: str, cfg: BenchConfig, n: int, size: tuple[int, int] | None = None) -> int:
    """Decode + encode with the job's settings; with `size`, also scale (to prepare a test clip)."""
    index = packets.scan_packets(src)
    info = probe(src, index)
    if size:
        info = replace(info, width=size[0], height=size[1])
    with VideoWriter(dst, info, cfg.video) as writer:
        for _, pts, rgb in decode(src, None, index, 0, n):
            writer.write(cv2.resize(rgb, size, interpolation=cv2.INTER_CUBIC) if size else rgb, pts)
    return n


def floor_and_job(src: str, tmp: str, cfg: BenchConfig, n: int) -> tuple[dict, dict, dict]:
    """The floor and the in-process job (one segment), alternating `cfg.runs` times; the fastest of
    each counts, with the fastest job's stage seconds: this VM's speed drifts by up to a third
    between runs (the floor of one clip 4.1 to 5.2 s within minutes), more than most changes do."""
    one_segment = replace(cfg, segment=SegmentConfig(seconds=0.0, overlap=cfg.segment.overlap))
    floors, jobs = [], []
    for run in range(max(1, cfg.runs)):
        floors.append(timed(lambda: floor_phase(src, os.path.join(tmp, "floor.mp4"), cfg, n)))
        stages: dict[str, float] = {}
        jobs.append((timed(lambda: job_phase(src, os.path.join(tmp, f"job-{run}"), one_segment, stages)), stages))
    job, stages = min(jobs, key=lambda j: j[0]["seconds"])
    return min(floors, key=lambda f: f["seconds"]), job, stages


def detect_phase(src: str, cfg: BenchConfig, n: int) -> int:
    """Decoding and detection alone, batched and streamed as a job's worker does it."""
    worker = Worker(cfg)
    index = packets.scan_packets(src)
    info = probe(src, index)
    frames = ((i, rgb) for i, _, rgb in decode(src, None, index, 0, n))
    worker.detect_stream(frames, 0, (info.width, info.height))
    return n


def job_phase(src: str, out_dir: str, cfg: BenchConfig, stages: dict) -> int:
    """The whole single-process path (segments of cfg.segment, one after another), finalize
    included; its stage seconds go to `stages`."""
    cfg = replace(cfg, output=out_dir)
    name = os.path.basename(src)
    (result,) = run_local(cfg, [(local_asset(src, name), os.path.join(out_dir, name))], "bench")
    if result.failure:
        raise RuntimeError(f"benchmark job failed: {result.failure.error_class}: {result.failure.error}")
    stages.update(result.stage_seconds)
    return result.frames


def profile(stages: dict[str, float], process_s: float, workers: int, cpu_s: float | None = None) -> dict:
    """Where a run's time went. `shares`: each stage's part of the stages' busy seconds (they
    overlap: decoding runs ahead, detection beside masking and encoding; run/stages.py).
    `workers_busy`: the workers' time (process seconds x workers) spent inside segments and
    photos; the rest is start-up (Ray, model load), planning, finalizing, manifests and idle
    workers. `cores_busy`: the workers' CPU seconds against all the machine's cores; `cpu_s`, the
    whole process's, where given (assets run in threads of one process each record all of its
    CPU in their stages: run/local.py)."""
    busy = {k: v for k, v in stages.items() if k not in ("wall", "cpu")}
    total = sum(busy.values()) or 1.0
    cpu = stages.get("cpu", 0.0) if cpu_s is None else cpu_s
    return {"shares": {k: round(v / total, 3) for k, v in sorted(busy.items(), key=lambda kv: -kv[1])},
            "workers_busy": round(stages.get("wall", 0.0) / (process_s * workers), 3),
            "cores_busy": round(cpu / (process_s * (os.cpu_count() or 1)), 3)}


def reference_phase(src: str, tmp: str, cfg: BenchConfig, overrides: list[str]) -> dict:
    """The real deface command line against anon-ray's, whole process, on one clip and on
    `bulk_copies` copies of it (several files keep every worker of the pool busy); with
    `leak_dataset`, deface's protection on it next to anon-ray's (anon-ray-eval on the same set)."""
    exe = deface_ref.deface_executable(cfg.deface_venv)
    out = {"reference": "deface 1.5.0 command line, defaults (its own virtualenv)",
           "single": deface_ref.race(src, Path(tmp), 1, cfg.runs, exe, overrides),
           "bulk": deface_ref.race(src, Path(tmp), cfg.bulk_copies, cfg.runs, exe, overrides)}
    if cfg.leak_dataset:
        out.update(deface_ref.deface_leak(cfg.leak_dataset, Path(tmp), exe, cfg.leak_limit))
    return out


def sweep_phase(src: str, tmp: str, cfg: BenchConfig) -> dict:
    """Throughput of the Ray job with k workers of about one core each (one ORT and one x264 thread).

    0.9 CPU, not 1: the embedded cluster keeps a little CPU free for planning and finalizing. With
    cluster.pin_cpus=true each worker is held to one core; unpinned, a lone worker's decode and
    encode threads also use the cores the sweep leaves idle, which flatters k = 1. The cluster is
    started before the clock runs (a nightly job joins a running one); each run still starts its
    workers and loads their models.
    """
    from anon_ray.run import distributed, job

    distributed.connect(cfg)
    fps = {}
    for k in cfg.workers_sweep:
        run_cfg = replace(cfg, input=src, output=os.path.join(tmp, f"sweep-{k}"), force=True,
                          cluster=replace(cfg.cluster, workers=k, cpus_per_worker=0.9),
                          video=replace(cfg.video, threads=1),
                          detect=replace(cfg.detect, session=replace(cfg.detect.session, intra_op_threads=1)))
        t0 = time.perf_counter()
        summary = job.run(run_cfg, distributed.run_assets)
        if summary.failed or not summary.ok:
            raise RuntimeError(f"sweep with {k} workers failed: {summary.failures}")
        fps[k] = summary.frames / (time.perf_counter() - t0)
    one = fps.get(1)
    return {"workers_fps": fps,
            "scaling": {k: v / one for k, v in fps.items()} if one else {},
            "scaling_efficiency": {k: v / (k * one) for k, v in fps.items()} if one else {}}


def synthetic_clip(dst: str, minutes: float, fps: int, size: tuple[int, int], cfg: BenchConfig) -> int:
    """A clip of moving faces (the bundled portrait, several sizes) of the given length."""
    from anon_ray.types import VideoInfo

    face = cv2.imread(str(SAMPLES / "astronaut.jpg"))[:, :, ::-1]
    w, h = size
    n = int(minutes * 60 * fps)
    info = VideoInfo(width=w, height=h, rotation=0, fps=(fps, 1), time_base=(1, fps), n_frames=n,
                     duration_s=n / fps, pix_fmt="yuv420p", codec="h264", color_range=0, color_primaries=2,
                     color_trc=2, colorspace=2, audio_streams=0, subtitle_streams=0, start_pts=0)
    sprites = [cv2.resize(face, (s, s)) for s in (96, 192, 320)]
    with VideoWriter(dst, info, cfg.video) as writer:
        for i in range(n):
            canvas = np.full((h, w, 3), 60, np.uint8)
            for k, sprite in enumerate(sprites):
                s = sprite.shape[0]
                x = int((w - s) * (0.5 + 0.5 * np.sin(i / (20 + 7 * k) + k)))
                y = int((h - s) * (0.5 + 0.5 * np.cos(i / (31 + 5 * k) + 2 * k)))
                canvas[y:y + s, x:x + s] = sprite
            writer.write(canvas, i)
    return n


def _segments_in_process(src: str, part_dir: str, cfg: BenchConfig, result) -> None:
    """What one actor does for a video: plan, then every segment; reports its peak RSS."""
    import resource

    worker = Worker(cfg)
    asset = local_asset(src, os.path.basename(src))
    vplan = lifecycle.plan(asset, cfg)
    results = vplan if isinstance(vplan, Failure) else lifecycle.encode_segments(worker, asset, vplan, part_dir)
    if isinstance(results, Failure):
        raise RuntimeError(f"benchmark segments failed: {results.error_class}: {results.error}")
    result.put((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, vplan, results))


def _finalize_in_process(src: str, dst: str, cfg: BenchConfig, vplan, results, result) -> None:
    """The finalize task on its own: stitching, concatenation, muxing and verification."""
    import resource

    out = lifecycle.finalize(cfg, local_asset(src, os.path.basename(src)), dst, vplan, results, time.time())
    if out.failure:
        raise RuntimeError(f"benchmark finalize failed: {out.failure.error_class}: {out.failure.error}")
    result.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def memory_phase(tmp: str, cfg: BenchConfig) -> dict:
    """Peak RSS of a segment worker and of the finalize task on 1080p clips of different lengths (I3).

    Each runs in a fresh process (spawn), as in the Ray job where segments run on actors and
    finalize is a task of its own, so each peak belongs to that clip and that role alone.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    workers, finalizers = {}, {}
    for minutes in cfg.memory_minutes:
        src = os.path.join(tmp, f"mem-{minutes}.mp4")
        synthetic_clip(src, minutes, cfg.memory_fps, (1920, 1080), cfg)
        part_dir = os.path.join(tmp, f"parts-{minutes}")
        os.makedirs(part_dir)
        queue = ctx.Queue()
        proc = ctx.Process(target=_segments_in_process, args=(src, part_dir, cfg, queue))
        proc.start()
        workers[minutes], vplan, results = queue.get()
        proc.join()
        proc = ctx.Process(target=_finalize_in_process,
                           args=(src, os.path.join(tmp, f"out-{minutes}.mp4"), cfg, vplan, results, queue))
        proc.start()
        finalizers[minutes] = queue.get()
        proc.join()
    return {"memory_worker_peak_rss_mb": workers, "memory_finalize_peak_rss_mb": finalizers,
            "memory_fps": cfg.memory_fps, "memory_segment_seconds": cfg.segment.seconds}


def run(cfg: BenchConfig, job_overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="anon-ray-bench-") as tmp:
        src = cfg.input
        n = len(packets.scan_packets(src))
        size = tuple(int(v) for v in cfg.resize.lower().split("x")) if cfg.resize else None
        if (cfg.frames and cfg.frames < n) or size:
            # Every phase then times the same prepared clip, the job included.
            n = floor_phase(src, os.path.join(tmp, "clip.mp4"), cfg, min(n, cfg.frames or n), size)
            src = os.path.join(tmp, "clip.mp4")
        info = probe(src)
        out = {"input": os.path.basename(src), "width": info.width, "height": info.height, "frames": n,
               "cpu_count": os.cpu_count(), "providers": ort.get_available_providers(),
               "plates": cfg.detect.plate.enabled}
        floor, job, stages = floor_and_job(src, tmp, cfg, n)
        det = timed(lambda: detect_phase(src, cfg, n))
        out.update(runs=max(1, cfg.runs), fps=job["fps"], floor_fps=floor["fps"],
                   ratio_to_floor=job["fps"] / floor["fps"], cpu_ms_per_frame=1000 * job["cpu_s"] / n,
                   floor_cpu_ms_per_frame=1000 * floor["cpu_s"] / n, cpu_ratio_to_floor=floor["cpu_s"] / job["cpu_s"],
                   detect_ms_per_frame=1000 * det["seconds"] / n, peak_rss_mb=job["peak_rss_mb"],
                   floor_peak_rss_mb=floor["peak_rss_mb"], profile_in_process=profile(stages, job["seconds"], 1))
        if cfg.reference:
            out.update(reference_phase(src, tmp, cfg, job_overrides))
            asset = local_asset(src, os.path.basename(src))
            for race in ("single", "bulk"):
                files = out[race]["files"]
                inline = engine.in_process(cfg, [(asset, "")] * files)  # as the race's copies are
                cpu = out[race].pop("anon_ray_cpu_s")
                out[race]["profile"] = profile(out[race].pop("anon_ray_stages"), out[race]["anon_ray_s"],
                                               min(files, cfg.cluster.workers) if inline else cfg.cluster.workers,
                                               cpu if inline else None)
        if cfg.workers_sweep:
            out.update(sweep_phase(src, tmp, cfg))
    return out


def main(cfg: BenchConfig, job_overrides: list[str]) -> None:
    """`job_overrides`: the command line's settings of the job (not of the benchmark), given to
    the anon-ray command line the reference races against."""
    if not (cfg.input or cfg.memory_minutes):
        raise SystemExit("anon-ray-bench: give input=VIDEO (and/or memory_minutes=[1,10])")
    result = run(cfg, job_overrides) if cfg.input else {}
    if cfg.memory_minutes:
        with tempfile.TemporaryDirectory(prefix="anon-ray-bench-mem-") as tmp:
            result.update(memory_phase(tmp, cfg))
    for key, value in result.items():
        print(f"  {key:22s} {value:.3f}" if isinstance(value, float) else f"  {key:22s} {value}", file=sys.stderr)
    print(json.dumps(result, default=float))
