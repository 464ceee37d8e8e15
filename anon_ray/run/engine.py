"""Which engine runs a job: the Ray pool, or this process for a job too small to need one.

Starting an embedded Ray cluster, its actors and their model sessions costs ~10-20 s before the
first frame; a job of one photo or one short clip is over before a pool would pay that back. Such
a job runs in process (run.local), with this machine's cores in one worker; anything larger, or
any job given a cluster to run on, goes to Ray.
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


def in_process(cfg: AppConfig, listed: list[tuple[Asset, str]]) -> bool:
    """True for a job of one local photo, or one local video no longer than a segment, on an
    embedded cluster (cluster.address and RAY_ADDRESS unset; cluster.inline true)."""
    if not cfg.cluster.inline or cfg.cluster.address or os.environ.get("RAY_ADDRESS") or len(listed) != 1:
        return False
    asset = listed[0][0]
    if asset.kind not in ("image", "video") or not os.path.isfile(asset.uri):  # object storage: the pool
        return False
    if asset.kind == "image":
        return True
    try:
        # The header's duration: a packet scan would read a long recording through, only for
        # the pool's plan to scan it again.
        seconds = header_seconds(asset.uri)
        if seconds is None:
            index = scan_packets(asset.uri)
            seconds = len(index) and float(index.pts[-1] - index.pts[0]) * index.time_base_num / index.time_base_den
    except Exception:  # noqa: BLE001 - the engine that runs it reports the error
        return True
    return seconds <= cfg.segment.seconds


def run_assets(cfg: AppConfig, todo: Iterable[tuple[Asset, str]], run_id: str,
               stop: StopRequest | None = None) -> Iterator[AssetResult]:
    """Engine for job.run: peeks at the first two assets of the listing to choose."""
    todo = iter(todo)
    listed = list(itertools.islice(todo, 2))
    if in_process(cfg, listed):
        yield from run_local(cfg, listed, run_id)
        return
    from anon_ray.run import distributed  # Ray is imported, and started, only when used

    yield from distributed.run_assets(cfg, itertools.chain(listed, todo), run_id, stop=stop)
