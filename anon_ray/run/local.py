"""The in-process engine for job.run: one process, assets in order or a few at once (tests,
notebooks, one machine, jobs too small for the pool: engine.py)."""

from __future__ import annotations

import os
import queue
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from anon_ray.config import AppConfig
from anon_ray.run import lifecycle, parts
from anon_ray.run.deadline import Deadline
from anon_ray.run.job import StopRequest
from anon_ray.run.pipeline import Worker
from anon_ray.run.resources import cores_shared
from anon_ray.types import Asset, AssetResult


def run_local(cfg: AppConfig, todo: Iterable[tuple[Asset, str]], run_id: str, threads: int = 1,
              stop: StopRequest | None = None) -> Iterator[AssetResult]:
    """Each asset gets `asset_timeout_s` from when it is taken, as in the Ray engine; with no
    driver to kill an overdue call, the worker checks the deadline itself (deadline.py).

    With `threads` > 1, that many assets run at once, each thread with a Worker of its own whose
    ONNX Runtime threads share the cores (as the pool's workers do), results yielded as assets
    finish: two workers in two threads masked two 720p clips in 37 s against 45 s one after the
    other with every core in one worker (2 cores; decoding, inference, masking and encoding
    leave the GIL). Once `stop` is requested no asset is started; those under way finish (they
    are not cancelled: the engine takes only a few short ones, engine.py)."""
    if threads <= 1:
        worker = Worker(cfg)
        with parts.part_root(cfg, run_id) as root:
            for asset, dst in todo:
                if stop is not None and stop.requested:
                    return
                yield _run_one(worker, asset, dst, root, cfg)
        return
    shared = cores_shared(cfg, len(os.sched_getaffinity(0)), threads)
    idle: queue.SimpleQueue[Worker] = queue.SimpleQueue()
    for _ in range(threads):
        idle.put(Worker(shared))

    def one(root: str, asset: Asset, dst: str) -> AssetResult:
        worker = idle.get()  # never waits: no more assets are in flight than there are workers
        try:
            return _run_one(worker, asset, dst, root, cfg)
        finally:
            idle.put(worker)

    with parts.part_root(cfg, run_id) as root, ThreadPoolExecutor(threads, thread_name_prefix="asset") as pool:
        running: set[Future] = set()
        for asset, dst in todo:
            if len(running) >= threads:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)
            if stop is not None and stop.requested:
                break
            running.add(pool.submit(one, root, asset, dst))
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            yield from (f.result() for f in done)


def _run_one(worker: Worker, asset: Asset, dst: str, root: str, cfg: AppConfig) -> AssetResult:
    deadline = Deadline.after(cfg.asset_timeout_s)
    if asset.kind == "video":
        return lifecycle.run_video(worker, asset, dst, parts.part_dir(root, asset), deadline)
    return lifecycle.image(worker, asset, dst, deadline)
