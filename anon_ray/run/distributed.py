"""The Ray engine: actor pool, resources, retries, streaming over assets (with ray_metrics.py,
the only modules that import Ray; the driver's counters of a run are there).

One actor class owns the ONNX sessions (created once per actor). Videos are planned by small
tasks, their segments spread over the pool, and each asset is finalized by a task as soon as its
last segment is done. At most `cluster.max_in_flight` assets are open at once, so the driver's
memory depends on that bound, not on the archive's size (I3).

Failure handling, per asset: an actor that dies mid-call is restarted (max_restarts=-1) and the
call retried on it (max_task_retries); the asset fails once a call has used up its retries, one of
its calls reports a failure, or it stays open longer than `asset_timeout_s` (error_class
'Timeout'; 0 = no limit). A failed asset's remaining calls are cancelled, and it is closed
(manifest row, output and parts removed) only once none of them can still write anything.

An asset's clock runs from when it is opened, as its manifest `seconds` does: it includes waiting
for workers behind the other open assets (at most max_in_flight - 1 of them).

Stopping (a job.StopRequest, set by the CLI on SIGTERM/SIGINT): no new asset is opened; the open ones
may finish during the request's grace period. Then, or at once on a second signal, every open asset is
failed as job.INTERRUPTED, its task calls cancelled by force and the pool's actors killed; each asset
closes as a failed one does (output, temporary files and parts removed) once its calls have reported
back. Results that were already complete are taken first, not thrown away.
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
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from anon_ray.config import AppConfig
from anon_ray.io import inventory, staging, storage
from anon_ray.run import affinity, parts, ray_metrics
from anon_ray.run.errors import Timeout
from anon_ray.run.resources import LIGHT_TASK_CPUS, check_resources, cores_shared, pinned_cores
from anon_ray.run.job import INTERRUPTED, StopRequest
from anon_ray.types import Asset, AssetResult, Failure, SegmentPlan, SegmentResult, VideoPlan

log = logging.getLogger("anon_ray")

ACTOR_QUEUE_DEPTH = 2  # calls queued per actor so it never idles between two segments
# ray.cancel does not stop an actor call: Ray has delivered it to the actor at submission, and once
# running it only sets a flag that the pipeline does not poll. A plan or finalize task stuck in native
# code ignores the KeyboardInterrupt of a soft cancel too. A failed asset's call still running this long
# after its cancel is stopped by force: the task's worker, or the actor (restarted with a fresh model
# load; calls of other assets queued on it are retried).
KILL_GRACE_S = 30.0
POLL_S = 0.5  # while a stop may be requested, the driver looks for it at least this often
# After a stop cancels everything, calls of killed workers report back within seconds; past this,
# the driver closes the assets left without waiting any longer (their files are removed all the same).
STOP_WAIT_S = 30.0
# An actor whose node is lost answers "unavailable" until Ray declares the node dead and restarts
# the actor elsewhere, which can outlast its call's retries. Such a call goes back to the queue
# for another actor (at most this many times per asset), and the actor gets no work for a while.
LOST_ACTOR_REQUEUES = 8
LOST_ACTOR_COOLDOWN_S = 30.0


def _lifecycle():
    """The worker side (PyAV), imported where a step runs: the driver, which only defines the
    remote calls, never loads it and keeps its memory for the listing."""
    from anon_ray.run import lifecycle

    return lifecycle


class SegmentActor:
    """Holds one pipeline.Worker (detector sessions) for the actor's lifetime."""

    def __init__(self, cfg: AppConfig):
        # Before the Worker: ONNX Runtime's thread pool inherits the affinity of its creator.
        self.cores = affinity.claim_cores(pinned_cores(cfg)) if cfg.cluster.pin_cpus else None
        if cfg.cluster.pin_cpus and self.cores is None:
            log.warning("cluster.pin_cpus: fewer than %d free cores on this node; worker %d runs unpinned",
                        pinned_cores(cfg), os.getpid())
        from anon_ray.run.pipeline import Worker  # the detectors load in actors, not in light tasks
        self.worker = Worker(cfg)

    def pid(self) -> int:
        return os.getpid()

    def image(self, asset: Asset, dst: str) -> AssetResult:
        return _lifecycle().image(self.worker, asset, dst)

    def segment(self, asset: Asset, seg: SegmentPlan, vplan: VideoPlan,
                part_path: str) -> SegmentResult | Failure:
        result = _lifecycle().segment(self.worker, asset, seg, vplan, part_path)
        return replace(result, node=node_id()) if isinstance(result, SegmentResult) else result


def node_id() -> str:
    """Ray's id of this process's node: opaque, no host name (recorded in the manifest per segment)."""
    return ray.get_runtime_context().get_node_id()


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


def make_pool(cfg: AppConfig, stop: StopRequest | None = None) -> list:
    cluster = ray.cluster_resources()
    check_resources(cfg, cluster)
    actor_cfg = cores_shared(cfg, cluster.get("CPU", os.cpu_count() or 1), cfg.cluster.workers)
    cls = ray.remote(SegmentActor).options(
        num_cpus=cfg.cluster.cpus_per_worker,
        num_gpus=cfg.cluster.gpus_per_worker,
        resources=dict(cfg.cluster.resources),
        # One node's loss takes as few workers with it as the cluster allows, and each node's
        # scratch disk and network serve as few segments at once.
        scheduling_strategy="SPREAD",
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


def _plan_here(asset: Asset, cfg: AppConfig, workers: int) -> tuple[VideoPlan, str] | Failure:
    vplan = _lifecycle().plan(asset, cfg, workers)
    return vplan if isinstance(vplan, Failure) else (vplan, node_id())


def _finalize_here(*args) -> AssetResult:
    return _lifecycle().finalize(*args)


_plan = ray.remote(num_cpus=LIGHT_TASK_CPUS, max_retries=3)(_plan_here)
_finalize = ray.remote(num_cpus=LIGHT_TASK_CPUS, max_retries=3)(_finalize_here)


def _near(node: str) -> NodeAffinitySchedulingStrategy | str:
    """Finalize on the node that planned: the input it reads whole is in that node's cache already
    (soft: anywhere else when that node is gone)."""
    return NodeAffinitySchedulingStrategy(node, soft=True) if node else "DEFAULT"


@dataclass
class _Open:
    """Driver-side state of one asset in flight."""

    asset: Asset
    dst: str
    started: float
    part_dir: str = ""
    vplan: VideoPlan | None = None
    # The plan in Ray's object store, put once: every segment call and the finalize task take this
    # reference, not a copy of the packet index each (a 24 h video's is ~20 MB).
    vplan_ref: ray.ObjectRef | None = None
    plan_node: str = ""
    results: dict[int, SegmentResult] = field(default_factory=dict)
    failure: Failure | None = None
    failed_at: float = 0.0
    calls: int = 0  # refs in flight
    forced: bool = False
    requeued: int = 0  # actor calls given to another actor after theirs was lost


@dataclass
class _Call:
    kind: str  # plan | segment | image | finalize
    key: str
    actor: int | None = None  # pool index of an actor call
    args: tuple = ()  # an actor call's arguments, to give it to another actor


class _Scheduler:
    """Driver state of one run: open assets, calls in flight, per-actor queue depth."""

    def __init__(self, cfg: AppConfig, pool: list, work_root: str):
        self.cfg = cfg
        self.pool = pool
        self.work_root = work_root
        self.load = [0] * len(pool)
        self.lost_until = [0.0] * len(pool)  # an actor found unavailable gets no work before this
        self.queue: deque = deque()  # (method name, args, asset key) waiting for an actor slot
        self.refs: dict = {}  # ObjectRef -> _Call, in submission order (an actor runs its calls in order)
        self.open: dict[str, _Open] = {}
        self.metrics = ray_metrics.RunMetrics()

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
        self.refs.clear()
        yield from self._close_failed()

    def _start(self, asset: Asset, dst: str) -> None:
        key = asset.relpath
        state = self.open[key] = _Open(asset, dst, time.time())
        if asset.kind == "video":
            state.part_dir = parts.part_dir(self.work_root, asset)
            self._track(_plan.remote(asset, self.cfg, len(self.pool)), _Call("plan", key))
        else:
            self.queue.append(("image", (asset, dst), key))

    def _track(self, ref, call: _Call) -> None:
        self.refs[ref] = call
        self.open[call.key].calls += 1

    def _submit_actor_work(self) -> None:
        while self.queue:
            now = time.time()
            usable = [i for i in range(len(self.pool)) if self.lost_until[i] <= now] or range(len(self.pool))
            idx = min(usable, key=self.load.__getitem__)
            if self.load[idx] >= ACTOR_QUEUE_DEPTH:
                return
            method, args, key = self.queue.popleft()
            state = self.open.get(key)
            if state is None or state.failure is not None:
                continue
            self.load[idx] += 1
            self._track(getattr(self.pool[idx], method).remote(*args), _Call(method, key, idx, args))

    def _collect(self, ref) -> AssetResult | None:
        """Take one finished call into its asset's state; the asset's result once it is final."""
        call = self.refs.pop(ref)
        state = self.open[call.key]
        state.calls -= 1
        if call.actor is not None:
            self.load[call.actor] -= 1
        try:
            value = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            if call.actor is not None and state.failure is None and state.requeued < LOST_ACTOR_REQUEUES:
                # Its node is gone or going: another actor redoes the call (parts are written atomically).
                log.warning("%s: worker %d unavailable (%s); its %s call goes to another worker",
                            call.key, call.actor, type(exc).__name__, call.kind)
                state.requeued += 1
                self.lost_until[call.actor] = time.time() + LOST_ACTOR_COOLDOWN_S
                self.queue.appendleft((call.kind, call.args, call.key))
                return None
            value = Failure.of(exc)
        except Exception as exc:  # noqa: BLE001 - retries used up, cancelled, or the actor is gone
            value = Failure.of(exc)
        if call.kind == "plan" and isinstance(value, tuple):
            value, state.plan_node = value
        if state.failure is not None:
            return None  # too late: what it wrote is removed when the asset closes
        if isinstance(value, Failure):
            self._fail(state, value)
            return None
        if call.kind in ("image", "finalize"):
            return self._close(call.key, value)  # ok, or failed with its output removed by the task
        if call.kind == "plan":
            state.vplan = value
            state.vplan_ref = ray.put(state.vplan)
            for seg in state.vplan.segments:
                part = parts.part_uri(state.part_dir, seg)
                self.queue.append(("segment", (state.asset, seg, state.vplan_ref, part), call.key))
        else:
            state.results[value.plan.index] = value
            self.metrics.segment(value)
            # Progress within a video, not only per asset: a 24 h recording is one asset.
            log.info("%s: %d of %d frames done (%d of %d segments)", inventory.display_path(call.key),
                     sum(r.frames_written for r in state.results.values()), state.vplan.info.n_frames,
                     len(state.results), len(state.vplan.segments))
            if len(state.results) == len(state.vplan.segments):
                results = [state.results[i] for i in sorted(state.results)]
                task = _finalize.options(scheduling_strategy=_near(state.plan_node))
                self._track(task.remote(self.cfg, state.asset, state.dst, state.vplan_ref, results, state.started),
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
                self._fail(state, Failure.of(Timeout.after_limit(self.cfg.asset_timeout_s)))
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
            parts.remove_quietly(state.dst, self.cfg.storage)
            if state.forced:  # a killed writer left temporary files or multipart uploads
                storage.abort_leftovers(state.dst, state.part_dir, self.cfg.storage)
            yield self._close(key, AssetResult(state.asset, state.dst, failure=state.failure,
                                                     seconds=time.time() - state.started))

    def _close(self, key: str, result: AssetResult) -> AssetResult:
        state = self.open.pop(key)
        if state.part_dir:
            staging.remove_tree(state.part_dir, self.cfg.storage)
        self.metrics.asset(result, len(self.open))
        return result


def run_assets(cfg: AppConfig, todo: Iterable[tuple[Asset, str]], run_id: str,
               stop: StopRequest | None = None) -> Iterator[AssetResult]:
    """Engine for job.run: stream assets through the pool, yield each result when it is final.
    With `stop`, the run winds down once it is requested (see the module's docstring)."""
    connect(cfg)
    pool = make_pool(cfg, stop)
    with parts.part_root(cfg, run_id) as work_root:
        scheduler = _Scheduler(cfg, pool, work_root)
        try:
            yield from scheduler.run(iter(todo), stop)
        finally:
            scheduler.abort()
