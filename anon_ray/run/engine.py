"""Which engine runs a job: the Ray pool, or this process for a job too small to need one.

Starting an embedded Ray cluster, its actors and their model sessions, and stopping it, costs
~10-15 s; a job of a few photos or short clips is over before a pool would pay that back. Such a
job runs in process (run.local), its assets shared among `cluster.workers` threads as they would
be among the pool's workers; anything larger, or any job given a cluster to run on, goes to Ray.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator

from anon_ray.config import AppConfig
from anon_ray.media.packets import scan_packets
from anon_ray.media.probe import header_seconds
from anon_ray.run.job import StopRequest
from anon_ray.run.local import run_local
from anon_ray.types import Asset, AssetResult


# A job of at most this many assets per worker (cluster.workers) may run in process.
INLINE_ASSETS_PER_WORKER = 2


def inline_limit(cfg: AppConfig) -> int:
    return INLINE_ASSETS_PER_WORKER * max(1, cfg.cluster.workers)


def in_process(cfg: AppConfig, listed: list[tuple[Asset, str]]) -> bool:
    """True for a small local job on an embedded cluster (cluster.address and RAY_ADDRESS unset;
    cluster.inline true): at most inline_limit assets, each a local photo or a local video no
    longer than a segment, the videos together no longer than one segment per worker."""
    if (not cfg.cluster.inline or cfg.cluster.address or os.environ.get("RAY_ADDRESS") or not listed
            or len(listed) > inline_limit(cfg)):
        return False
    total = 0.0
    for asset, _ in listed:
        if asset.kind not in ("image", "video") or not os.path.isfile(asset.uri):  # object storage: the pool
            return False
        if asset.kind == "video":
            seconds = _seconds(asset.uri)
            if seconds > cfg.segment.seconds:
                return False
            total += seconds
    return total <= max(1, cfg.cluster.workers) * cfg.segment.seconds


def _seconds(path: str) -> float:
    """A local video's duration; 0 for one that cannot be read (the engine that runs it reports the error)."""
    try:
        # The header's duration: a packet scan would read a long recording through, only for
        # the pool's plan to scan it again.
        seconds = header_seconds(path)
        if seconds is None:
            index = scan_packets(path)
            seconds = len(index) and float(index.pts[-1] - index.pts[0]) * index.time_base_num / index.time_base_den
    except Exception:  # noqa: BLE001
        return 0.0
    return seconds


def run_assets(cfg: AppConfig, todo: Iterable[tuple[Asset, str]], run_id: str,
               stop: StopRequest | None = None) -> Iterator[AssetResult]:
    """Engine for job.run: peeks at the first inline_limit + 1 assets of the listing to choose."""
    todo = iter(todo)
    listed = list(itertools.islice(todo, inline_limit(cfg) + 1))
    if in_process(cfg, listed):
        yield from run_local(cfg, listed, run_id, threads=min(max(1, cfg.cluster.workers), len(listed)), stop=stop)
        return
    from anon_ray.run import distributed  # Ray is imported, and started, only when used

    yield from distributed.run_assets(cfg, itertools.chain(listed, todo), run_id, stop=stop)
