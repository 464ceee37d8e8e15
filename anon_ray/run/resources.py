"""How much of a node the actor pool takes: checked before the pool starts, so that a pool that
cannot be placed fails the job instead of hanging it (no Ray here: plain arithmetic on the
cluster's resource totals, which run/distributed.py reads from Ray)."""

from __future__ import annotations

import logging
import os
from dataclasses import replace

from anon_ray.config import AppConfig

log = logging.getLogger("anon_ray")

# Planning and finalizing are I/O-bound and short: they must never wait behind the actors for a
# whole CPU (Ray would hold them back and the pipeline would stall; see DESIGN.md §3).
LIGHT_TASK_CPUS = 0.1


def pinned_cores(cfg: AppConfig) -> int:
    """Cores a pinned worker claims: its CPU reservation rounded (0.9 leaves Ray a little slack
    for planning and finalizing, still one core)."""
    return max(1, round(cfg.cluster.cpus_per_worker))


def cores_shared(cfg: AppConfig, node_cpus: float, workers: int) -> AppConfig:
    """cfg for one of `workers` workers on a node: ONNX Runtime's threads, where config leaves them
    to us (0), the node's cores shared among the workers."""
    session = cfg.detect.session
    if session.intra_op_threads > 0:
        return cfg
    threads = max(1, int(node_cpus // max(1, workers)))
    return replace(cfg, detect=replace(cfg.detect, session=replace(session, intra_op_threads=threads)))


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
