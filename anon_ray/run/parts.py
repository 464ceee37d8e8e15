"""Where a video's segment parts live while its asset is open: the run's folder, names, clean-up.

Light on purpose: the Ray driver uses it without importing the media and detector stack.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

from anon_ray.config import AppConfig, StorageConfig
from anon_ray.io import staging, storage
from anon_ray.io.inventory import INTERNAL_DIR
from anon_ray.types import Asset, SegmentPlan


def asset_dir_name(asset: Asset) -> str:
    return hashlib.sha256(asset.relpath.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def remove_quietly(uri: str, cfg: StorageConfig) -> None:
    """Best-effort clean-up of a part or a failed output file (never a folder someone else owns);
    the failure being handled matters more than this one."""
    with contextlib.suppress(Exception):
        storage.remove(uri, cfg)


@contextlib.contextmanager
def part_root(cfg: AppConfig, run_id: str) -> Iterator[str]:
    """This run's folder (or prefix, for object-store outputs) for segment parts.

    Parts sit beside the output so every node of a cluster reaches them; the folder goes when the
    run ends, with its parent when no other run uses it.
    """
    parent = storage.join(cfg.output, INTERNAL_DIR, "tmp")
    root = storage.join(parent, run_id)
    storage.make_dirs(root)
    try:
        yield root
    finally:
        staging.remove_tree(root, cfg.storage)
        # A worker killed mid-upload (its node lost) leaves an invisible upload under the run's prefix.
        with contextlib.suppress(Exception):
            storage.abort_stale_uploads(root, cfg.storage, older_than_s=0)
        storage.remove_dir_if_empty(parent)


def part_dir(root: str, asset: Asset) -> str:
    return storage.join(root, asset_dir_name(asset))


def part_uri(folder: str, seg: SegmentPlan) -> str:
    return storage.join(folder, part_name(seg))


def part_name(seg: SegmentPlan) -> str:
    # MP4 parts: the muxer keeps decode timestamps, which the stream-copy concatenation needs.
    return f"part-{seg.index:05d}.mp4"
