"""The only module that imports Ray: actor pool, resources, retries, streaming over assets.

One actor class owns the ONNX sessions (created once per actor). Videos are planned by small
tasks, their segments spread over the pool, and each asset is finalized by a task as soon as its
last segment is done. At most `cluster.max_in_flight` assets are open at once, so the driver's
memory depends on that bound, not on the archive's size (I3).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

import ray

from . import pipeline, tasks
from .config import AppConfig
from .types import Asset, SegmentResult

log = logging.getLogger("anon_ray")

# Planning and finalizing are I/O-bound and short: they must never wait behind the actors for a
# whole CPU (Ray would hold them back and the pipeline would stall; see DESIGN.md §3).
LIGHT_TASK_CPUS = 0.1
ACTOR_QUEUE_DEPTH = 2  # calls queued per actor so it never idles between two segments


class SegmentActor:
    """Holds one pipeline.Worker (detector sessions) for the actor's lifetime."""

    def __init__(self, cfg: AppConfig):
        self.worker = pipeline.Worker(cfg)

    def pid(self) -> int:
        return os.getpid()

    def image(self, asset: Asset, dst: str) -> tasks.AssetResult:
        return tasks.image_task(self.worker, asset, dst)

    def segment(self, asset: Asset, seg, vplan, part_path: str):
        return tasks.segment_task(self.worker, asset, seg, vplan, part_path)


@dataclass
class _Open:
    """Driver-side state of one asset in flight."""

    asset: Asset
    dst: str
    started: float
    part_dir: str = ""
    vplan: pipeline.VideoPlan | None = None
    results: dict[int, SegmentResult] = field(default_factory=dict)
    failure: tasks.Failure | None = None


def threads_per_worker(cfg: AppConfig, node_cpus: float) -> int:
    """ONNX Runtime threads for one actor when config leaves it to us: share the node's cores."""
    if cfg.detect.session.intra_op_threads > 0:
        return cfg.detect.session.intra_op_threads
    return max(1, int(node_cpus // max(1, cfg.cluster.workers)))


def connect(cfg: AppConfig) -> None:
    if ray.is_initialized():
        return
    if cfg.cluster.address:
        ray.init(address=cfg.cluster.address, log_to_driver=False)
    else:
        # RAY_ADDRESS is set under `ray job submit`: ray.init() then joins that cluster.
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)


def make_pool(cfg: AppConfig) -> list:
    node_cpus = ray.cluster_resources().get("CPU", os.cpu_count() or 1)
    actor_cfg = replace(cfg, detect=replace(cfg.detect, session=replace(
        cfg.detect.session, intra_op_threads=threads_per_worker(cfg, node_cpus))))
    cls = ray.remote(SegmentActor).options(
        num_cpus=cfg.cluster.cpus_per_worker,
        num_gpus=cfg.cluster.gpus_per_worker,
        max_restarts=-1,
        max_task_retries=cfg.cluster.max_retries,
    )
    return [cls.remote(actor_cfg) for _ in range(max(1, cfg.cluster.workers))]


_plan = ray.remote(num_cpus=LIGHT_TASK_CPUS, max_retries=3)(tasks.plan_task)
_finalize = ray.remote(num_cpus=LIGHT_TASK_CPUS, max_retries=3)(tasks.finalize_task)


def run_assets(cfg: AppConfig, todo: Iterable[tuple[Asset, str]], run_id: str) -> Iterator[tasks.AssetResult]:
    """Engine for job.run: stream assets through the pool, yield each result when it is final."""
    connect(cfg)
    pool = make_pool(cfg)
    load = {i: 0 for i in range(len(pool))}
    queue: deque = deque()  # (method name, args, asset key, segment index or None)
    refs: dict = {}  # ObjectRef -> (kind, key, detail)
    open_assets: dict[str, _Open] = {}
    source = iter(todo)
    exhausted = False
    scratch = tasks.part_root(cfg.output, run_id)
    work_root = scratch.__enter__()

    def submit_actor_work() -> None:
        while queue:
            idx = min(load, key=load.get)
            if load[idx] >= ACTOR_QUEUE_DEPTH:
                return
            method, args, key, seg_index = queue.popleft()
            if open_assets[key].failure is not None:
                continue
            ref = getattr(pool[idx], method).remote(*args)
            load[idx] += 1
            refs[ref] = (method, key, (idx, seg_index))

    def close(key: str, result: tasks.AssetResult) -> tasks.AssetResult:
        state = open_assets.pop(key)
        if state.part_dir:
            shutil.rmtree(state.part_dir, ignore_errors=True)
        return result

    def fail(key: str, failure: tasks.Failure) -> tasks.AssetResult:
        state = open_assets[key]
        tasks.remove_quietly(state.dst)
        return close(key, tasks.AssetResult(state.asset, state.dst, failure=failure,
                                            seconds=time.time() - state.started))

    try:
        while True:
            while not exhausted and len(open_assets) < cfg.cluster.max_in_flight:
                try:
                    asset, dst = next(source)
                except StopIteration:
                    exhausted = True
                    break
                key = asset.relpath
                state = open_assets[key] = _Open(asset, dst, time.time())
                if asset.kind == "video":
                    state.part_dir = os.path.join(work_root, tasks.asset_dir_name(asset))
                    os.makedirs(state.part_dir, exist_ok=True)
                    refs[_plan.remote(asset, cfg)] = ("plan", key, None)
                else:
                    queue.append(("image", (asset, dst), key, None))
            submit_actor_work()
            if not refs:
                if exhausted and not queue:
                    return
                continue
            ready, _ = ray.wait(list(refs), num_returns=1)
            ref = ready[0]
            kind, key, detail = refs.pop(ref)
            if kind in ("image", "segment"):
                load[detail[0]] -= 1
            if key not in open_assets:
                continue
            try:
                value = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - a task that exhausted its retries
                if kind != "segment" or open_assets[key].failure is None:
                    open_assets[key].failure = tasks.Failure.of(exc)
                value = open_assets[key].failure
            state = open_assets[key]
            if kind == "image" or kind == "finalize":
                if isinstance(value, tasks.Failure):
                    yield fail(key, value)
                else:
                    yield close(key, value)
            elif kind == "plan":
                if isinstance(value, tasks.Failure):
                    yield fail(key, value)
                    continue
                state.vplan = value
                for seg in value.segments:
                    part = os.path.join(state.part_dir, pipeline.part_name(seg))
                    queue.append(("segment", (state.asset, seg, value, part), key, seg.index))
            else:  # segment
                if isinstance(value, tasks.Failure):
                    state.failure = value
                    if not any(k == key for _, k, _ in refs.values()):
                        yield fail(key, value)
                    continue
                state.results[value.plan.index] = value
                if len(state.results) == len(state.vplan.segments):
                    results = [state.results[i] for i in sorted(state.results)]
                    refs[_finalize.remote(state.asset, state.dst, state.vplan, results, state.started)] = ("finalize", key, None)
            if state.failure is not None and key in open_assets and not any(k == key for _, k, _ in refs.values()):
                yield fail(key, state.failure)
    finally:
        for ref in refs:
            ray.cancel(ref, force=False)
        scratch.__exit__(None, None, None)
