"""The in-process engine for job.run: one process, assets in order (tests, notebooks, one machine)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from anon_ray.config import AppConfig
from anon_ray.run import lifecycle, parts
from anon_ray.run.deadline import Deadline
from anon_ray.run.pipeline import Worker
from anon_ray.types import Asset, AssetResult


def run_local(cfg: AppConfig, todo: Iterable[tuple[Asset, str]], run_id: str) -> Iterator[AssetResult]:
    """Each asset gets `asset_timeout_s` from when it is taken, as in the Ray engine; with no
    driver to kill an overdue call, the worker checks the deadline itself (deadline.py)."""
    worker = Worker(cfg)
    with parts.part_root(cfg, run_id) as root:
        for asset, dst in todo:
            deadline = Deadline.after(cfg.asset_timeout_s)
            if asset.kind == "video":
                yield lifecycle.run_video(worker, asset, dst, parts.part_dir(root, asset), deadline)
            else:
                yield lifecycle.image(worker, asset, dst, deadline)
