"""The only module that imports Ray: actor pool, resources, retries, streaming over assets.

One actor class owns the ONNX sessions (created once per actor). Videos are planned by small
tasks, their segments spread over the pool, and each asset is finalized by a task as soon as its
last segment is done. At most `cluster.max_in_flight` assets are open at once, so the driver's
memory depends on that bound, not on the archive's size (I3).

Failure handling, per asset: an actor that dies mid-call is restarted (max_restarts=-1) and the
call retried on it (max_task_retries); the asset fails once a call has used up its retries, one of
its calls reports a failure, or it stays open longer than `asset_timeout_s` (error_class
'Timeout'; 0 = no limit). A failed asset's remaining calls are cancelled, and it is closed
(manifest row, output and parts removed) only once none of them can still write anything.

An asset's clock runs from when it is opened, as its manifest `seconds` does, so it includes
waiting for workers behind the other open assets (at most max_in_flight - 1 of them).

Stopping (a job.StopRequest, set by the CLI on SIGTERM/SIGINT): no new asset is opened; the open
ones may finish during the request's grace period. Then, or at once on a second signal, every
open asset is failed as job.INTERRUPTED, its task calls cancelled by force and the pool's actors
killed; each asset closes as a failed one does (output, temporary files and parts removed) once
its calls have reported back. Results that were already complete are taken first, not thrown away.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

import ray

from anon_ray.config import AppConfig
from anon_ray.io import staging, storage
from anon_ray.run import affinity, lifecycle, pipeline
from anon_ray.run.job import INTERRUPTED, StopRequest
from anon_ray.types import Asset, AssetResult, Failure, SegmentPlan, SegmentResult, VideoPlan

log = logging.getLogger("anon_ray")

# Planning and finalizing are I/O-bound and short: they must never wait behind the actors for a
# whole CPU (Ray would hold them back and the pipeline would stall; see DESIGN.md §3).
LIGHT_TASK_CPUS = 0.1
ACTOR_QUEUE_DEPTH = 2  # calls queued per actor so it never idles between two segments
# ray.cancel does not stop an actor call: Ray has delivered it to the actor at submission, and
# once running it only sets a flag that the pipeline does not poll. A plan or finalize task stuck
# in native code ignores the KeyboardInterrupt of a soft cancel too. A failed asset's call still
# running this long after its cancel is stopped by force: the task's worker, or the actor
# (restarted with a fresh model load; calls of other assets queued on it are retried).
KILL_GRACE_S = 30.0
POLL_S = 0.5  # while a stop may be requested, the driver looks for it at least this often
# After a stop cancels everything, calls of killed workers report back within seconds; past this,
# the driver closes the assets left without waiting any longer (their files are removed all the same).
STOP_WAIT_S = 30.0


class SegmentActor:
    """Holds one pipeline.Worker (detector sessions) for the actor's lifetime."""

    def __init__(self, cfg: AppConfig):
        # Before the Worker: ONNX Runtime's thread pool inherits the affinity of its creator.
        self.cores = affinity.claim_cores(pinned_cores(cfg)) if cfg.cluster.pin_cpus else None
        if cfg.cluster.pin_cpus and self.cores is None:
            log.warning("cluster.pin_cpus: fewer than %d free cores on this node; worker %d runs unpinned",
                        pinned_cores(cfg), os.getpid())
        self.worker = pipeline.Worker(cfg)

    def pid(self) -> int:
        return os.getpid()

    def image(self, asset: Asset, dst: str) -> AssetResult:
        return lifecycle.image(self.worker, asset, dst)

    def segment(self, asset: Asset, seg: SegmentPlan, vplan: VideoPlan,
                part_path: str) -> SegmentResult | Failure:
        return lifecycle.segment(self.worker, asset, seg, vplan, part_path)


def pinned_cores(cfg: AppConfig) -> int:
    """Cores a pinned worker claims: its CPU reservation rounded (0.9 leaves Ray a little slack
    for planning and finalizing, still one core)."""
    return max(1, round(cfg.cluster.cpus_per_worker))


def threads_per_worker(cfg: AppConfig, node_cpus: float) -> int:
    """ONNX Runtime threads for one actor when config leaves it to us: share the node's cores."""
    if cfg.detect.session.intra_op_threads > 0:
        return cfg.detect.session.intra_op_threads
    return max(1, int(node_cpus // max(1, cfg.cluster.workers)))


def connect(cfg: AppConfig) -> None:
    if ray.is_initialized():
        return
    # ray.init makes SIGTERM call sys.exit; a handler our caller installed (the CLI's graceful
    # stop) must survive it.
    main = threading.current_thread() is threading.main_thread()
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)} if main else {}
    try:
        _init(cfg)
    finally:
        for signum, handler in saved.items():
            if callable(handler):
                signal.signal(signum, handler)


def _init(cfg: AppConfig) -> None:
    if cfg.cluster.address:
        ray.init(address=cfg.cluster.address, log_to_driver=False)
    elif os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)  # set by `ray job submit`: join the cluster running the job
    else:
        # "local": a fresh cluster of our own. Without it ray.init() joins whatever cluster the
        # last `ray start` on this machine left in /tmp/ray - maybe another user's.
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)


def check_resources(cfg: AppConfig, cluster: dict[str, float]) -> None:
    """Refuse a pool that cannot be placed, or that leaves no CPU for plan/finalize tasks.

    Either would make the job hang instead of fail. Only a cluster we started ourselves is known
    not to grow; on a joined cluster an autoscaler may still add nodes, so there it is a warning.
    """
    workers = max(1, cfg.cluster.workers)
    cpus_left = cluster.get("CPU", 0.0) - workers * cfg.cluster.cpus_per_worker
    gpus_left = cluster.get("GPU", 0.0) - workers * cfg.cluster.gpus_per_worker
    problems = []
    if cpus_left < LIGHT_TASK_CPUS:
        problems.append(f"{workers} workers x {cfg.cluster.cpus_per_worker:g} CPU leave {cpus_left:g} CPU, "
                        f"less than the {LIGHT_TASK_CPUS:g} that planning and finalizing need")
    if gpus_left < 0:
        problems.append(f"{workers} workers x {cfg.cluster.gpus_per_worker:g} GPU exceed the cluster's "
                        f"{cluster.get('GPU', 0.0):g} GPU")
    if not problems:
        return
    msg = "; ".join(problems) + " (set cluster.workers, cluster.cpus_per_worker, cluster.gpus_per_worker)"
    if cfg.cluster.address or os.environ.get("RAY_ADDRESS"):
        log.warning(msg)
    else:
        raise ValueError(msg)


def make_pool(cfg: AppConfig, stop: StopRequest | None = None) -> list:
    cluster = ray.cluster_resources()
    check_resources(cfg, cluster)
    actor_cfg = replace(cfg, detect=replace(cfg.detect, session=replace(
        cfg.detect.session, intra_op_threads=threads_per_worker(cfg, cluster.get("CPU", os.cpu_count() or 1)))))
    cls = ray.remote(SegmentActor).options(
        num_cpus=cfg.cluster.cpus_per_worker,
        num_gpus=cfg.cluster.gpus_per_worker,
        max_restarts=-1,
        max_task_retries=cfg.cluster.max_retries,
    )
    pool = [cls.remote(actor_cfg) for _ in range(max(1, cfg.cluster.workers))]
    # Fail the job, not every asset, when no actor can start (missing models, bad config); and
    # start the assets' clocks (asset_timeout_s) only once a worker is there to work on them.
    log.info("waiting for the first of %d workers to load its models", len(pool))
    pending = [a.pid.remote() for a in pool]
    while True:
        ready, pending = ray.wait(pending, num_returns=1, timeout=POLL_S if stop is not None else None)
        if ready:
            ray.get(ready[0])
            return pool
        if stop is not None and stop.requested:
            return pool  # stopped before any work: the scheduler opens nothing


_plan = ray.remote(num_cpus=LIGHT_TASK_CPUS, max_retries=3)(lifecycle.plan)
_finalize = ray.remote(num_cpus=LIGHT_TASK_CPUS, max_retries=3)(lifecycle.finalize)


@dataclass
class _Open:
    """Driver-side state of one asset in flight."""

    asset: Asset
    dst: str
    started: float
    part_dir: str = ""
    vplan: VideoPlan | None = None
    results: dict[int, SegmentResult] = field(default_factory=dict)
    failure: Failure | None = None
    failed_at: float = 0.0
    calls: int = 0  # refs in flight
    forced: bool = False


@dataclass
class _Call:
    kind: str  # plan | segment | image | finalize
    key: str
    actor: int | None = None  # pool index of an actor call


class _Scheduler:
    """Driver state of one run: open assets, calls in flight, per-actor queue depth."""

    def __init__(self, cfg: AppConfig, pool: list, work_root: str):
        self.cfg = cfg
        self.pool = pool
        self.work_root = work_root
        self.load = [0] * len(pool)
        self.queue: deque = deque()  # (method name, args, asset key) waiting for an actor slot
        self.refs: dict = {}  # ObjectRef -> _Call, in submission order (an actor runs its calls in order)
        self.open: dict[str, _Open] = {}

    def run(self, source: Iterator[tuple[Asset, str]], stop: StopRequest | None = None) -> Iterator[AssetResult]:
        exhausted = False
        cancelled_at = 0.0
        while True:
            if stop is not None and stop.requested:
                if not exhausted:
                    exhausted = True
                    if self.open:
                        log.warning("%s: taking no new assets; the %d in flight get %.0f s to finish, then are "
                                    "cancelled (signal again to cancel now)", stop.name, len(self.open),
                                    stop.seconds_left() or 0.0)
                if self.open and not cancelled_at and stop.urgent:
                    yield from self._cancel_all(f"the run was stopped by {stop.name} before this asset finished")
                    cancelled_at = time.time()
                if cancelled_at and time.time() > cancelled_at + STOP_WAIT_S:
                    yield from self._close_all_now()
            while not exhausted and len(self.open) < self.cfg.cluster.max_in_flight:
                item = next(source, None)
                if item is None:
                    exhausted = True
                else:
                    self._start(*item)
            self._submit_actor_work()
            yield from self._close_failed()
            if not self.refs:
                if exhausted and not self.open:
                    return
                continue
            timeout = self._next_deadline()
            if stop is not None:  # wake up to see a stop request and the end of its grace period
                timeout = POLL_S if timeout is None else min(timeout, POLL_S)
            ready, _ = ray.wait(list(self.refs), num_returns=1, timeout=timeout)
            if ready:
                result = self._collect(ready[0])
                if result is not None:
                    yield result
            self._enforce_deadlines()

    def abort(self) -> None:
        """The run ends early (consumer gone, driver error): stop everything still running."""
        for ref, call in self.refs.items():
            if call.actor is None:
                ray.cancel(ref)
        for actor in self.pool:
            ray.kill(actor)

    def _cancel_all(self, reason: str) -> Iterator[AssetResult]:
        """Stop every open asset now: fail it as interrupted, cancel its calls, kill the workers."""
        done, _ = ray.wait(list(self.refs), num_returns=len(self.refs), timeout=0) if self.refs else ([], [])
        for ref in done:  # complete already: keep it
            result = self._collect(ref)
            if result is not None:
                yield result
        log.warning("cancelling %d assets in flight", len(self.open))
        failure = Failure(INTERRUPTED, reason)
        for state in self.open.values():
            if state.failure is None:
                self._fail(state, failure)
            state.forced = True  # a killed writer may leave a temporary file beside the output
        self.queue.clear()
        for ref, call in self.refs.items():
            if call.actor is None:
                ray.cancel(ref, force=True)
        # A running actor call ignores its cancel: stop the actors themselves. No restart: no new
        # work is coming, and their pending calls then fail at once instead of being retried.
        for actor in self.pool:
            ray.kill(actor, no_restart=True)

    def _close_all_now(self) -> Iterator[AssetResult]:
        """Last resort after a stop: close what is still open without waiting for its calls."""
        for key, state in self.open.items():
            log.warning("%s: closed without its calls reporting back after the stop", key)
            state.calls = 0
        for ref in list(self.refs):
            del self.refs[ref]
        yield from self._close_failed()

    def _start(self, asset: Asset, dst: str) -> None:
        key = asset.relpath
        state = self.open[key] = _Open(asset, dst, time.time())
        if asset.kind == "video":
            state.part_dir = lifecycle.part_dir(self.work_root, asset)
            self._track(_plan.remote(asset, self.cfg, len(self.pool)), _Call("plan", key))
        else:
            self.queue.append(("image", (asset, dst), key))

    def _track(self, ref, call: _Call) -> None:
        self.refs[ref] = call
        self.open[call.key].calls += 1

    def _submit_actor_work(self) -> None:
        while self.queue:
            idx = min(range(len(self.pool)), key=self.load.__getitem__)
            if self.load[idx] >= ACTOR_QUEUE_DEPTH:
                return
            method, args, key = self.queue.popleft()
            state = self.open.get(key)
            if state is None or state.failure is not None:
                continue
            self.load[idx] += 1
            self._track(getattr(self.pool[idx], method).remote(*args), _Call(method, key, idx))

    def _collect(self, ref) -> AssetResult | None:
        """Take one finished call into its asset's state; the asset's result once it is final."""
        call = self.refs.pop(ref)
        state = self.open[call.key]
        state.calls -= 1
        if call.actor is not None:
            self.load[call.actor] -= 1
        try:
            value = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - retries used up, cancelled, or the actor is gone
            value = Failure.of(exc)
        if state.failure is not None:
            return None  # too late: what it wrote is removed when the asset closes
        if isinstance(value, Failure):
            self._fail(state, value)
            return None
        if call.kind in ("image", "finalize"):
            return self._close(call.key, value)  # ok, or failed with its output removed by the task
        if call.kind == "plan":
            state.vplan = value
            for seg in value.segments:
                part = lifecycle.part_uri(state.part_dir, seg)
                self.queue.append(("segment", (state.asset, seg, value, part), call.key))
        else:
            state.results[value.plan.index] = value
            if len(state.results) == len(state.vplan.segments):
                results = [state.results[i] for i in sorted(state.results)]
                self._track(_finalize.remote(self.cfg, state.asset, state.dst, state.vplan, results, state.started),
                            _Call("finalize", call.key))
        return None

    def _fail(self, state: _Open, failure: Failure) -> None:
        """Mark the asset failed and cancel its calls; it closes when the last one has returned."""
        state.failure, state.failed_at = failure, time.time()
        for ref, call in self.refs.items():
            if call.key == state.asset.relpath:
                ray.cancel(ref)

    def _due(self, state: _Open) -> float | None:
        """When an asset next needs the driver: at its time limit, or to force its cancelled calls."""
        if state.failure is None:
            return state.started + self.cfg.asset_timeout_s if self.cfg.asset_timeout_s > 0 else None
        return state.failed_at + KILL_GRACE_S if state.calls and not state.forced else None

    def _next_deadline(self) -> float | None:
        """Seconds until the next _due of any open asset (None: no deadline)."""
        due = [d for d in map(self._due, self.open.values()) if d is not None]
        return max(0.0, min(due) - time.time()) if due else None

    def _enforce_deadlines(self) -> None:
        now = time.time()
        for key, state in self.open.items():
            due = self._due(state)
            if due is None or now < due:
                continue
            if state.failure is None:
                self._fail(state, Failure.of(pipeline.Timeout.after_limit(self.cfg.asset_timeout_s)))
            else:
                self._force(key)

    def _force(self, key: str) -> None:
        state = self.open[key]
        state.forced = True
        done, _ = ray.wait(list(self.refs), num_returns=len(self.refs), timeout=0)
        done = set(done)
        running = {}  # actor index -> its oldest unfinished call: the one it is executing
        for ref, call in self.refs.items():
            if ref in done:
                continue
            if call.actor is not None:
                running.setdefault(call.actor, call)
            elif call.key == key:
                ray.cancel(ref, force=True)
        for idx, call in running.items():
            if call.key == key:
                log.warning("%s: killing worker %d, whose call has run %.0f s past its cancel",
                            key, idx, time.time() - state.failed_at)
                ray.kill(self.pool[idx], no_restart=False)

    def _close_failed(self) -> Iterator[AssetResult]:
        for key in [k for k, s in self.open.items() if s.failure is not None and not s.calls]:
            state = self.open[key]
            lifecycle.remove_quietly(state.dst, self.cfg.storage)
            if state.forced:  # a killed writer left temporary files or multipart uploads
                storage.abort_leftovers(state.dst, state.part_dir, self.cfg.storage)
            yield self._close(key, AssetResult(state.asset, state.dst, failure=state.failure,
                                                     seconds=time.time() - state.started))

    def _close(self, key: str, result: AssetResult) -> AssetResult:
        state = self.open.pop(key)
        if state.part_dir:
            staging.remove_tree(state.part_dir, self.cfg.storage)
        return result


def run_assets(cfg: AppConfig, todo: Iterable[tuple[Asset, str]], run_id: str,
               stop: StopRequest | None = None) -> Iterator[AssetResult]:
    """Engine for job.run: stream assets through the pool, yield each result when it is final.

    With `stop`, the run winds down once it is requested (see the module's docstring).
    """
    connect(cfg)
    pool = make_pool(cfg, stop)
    with lifecycle.part_root(cfg, run_id) as work_root:
        scheduler = _Scheduler(cfg, pool, work_root)
        try:
            yield from scheduler.run(iter(todo), stop)
        finally:
            scheduler.abort()
