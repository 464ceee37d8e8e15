"""Local files for remote assets: inputs fetched into a node-local cache, outputs staged then published.

Workers always decode from and encode to local files; this module is the only place that knows an
asset or a part may live in object storage. Publishing is atomic: an object appears under its
final key only when complete (I1).
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from anon_ray.config import StorageConfig
from anon_ray.io import ranged, s3, scratch, storage
from anon_ray.io.uri import is_s3, parse_uri
from anon_ray.types import Asset


def scratch_root(cfg: StorageConfig) -> str:
    root = cfg.scratch_dir or os.path.join(tempfile.gettempdir(), "anon-ray-scratch")
    os.makedirs(root, exist_ok=True)
    return root


@functools.lru_cache(maxsize=4)
def _cache(root: str, max_bytes: int) -> scratch.ScratchCache:
    return scratch.ScratchCache(os.path.join(root, "inputs"), max_bytes)


def fetch(uri: str, version: str, cfg: StorageConfig) -> str:
    """A local path holding `uri` at `version` (the path itself for local files)."""
    if not is_s3(uri):
        return uri
    return _cache(scratch_root(cfg), int(cfg.scratch_max_gb * 2**30)).fetch(uri, version, cfg)


def local_input(asset: Asset, cfg: StorageConfig) -> str:
    return fetch(asset.uri, asset.version, cfg)


# Demuxers that seek through an index (mp4/mov sample tables, Matroska cues) read the header, the
# index entries they need and the wanted packets, so a segment fetches only those ranges. Others
# are fetched whole: MPEG-TS and MPEG-PS seek by bisecting the byte stream, raw elementary
# streams and AVI files without an index read from the start.
RANGED_CONTAINERS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"})


@dataclass
class SegmentInput:
    source: str | ranged.RangedObject  # a local path, or what the decoder opens in ranges
    ranged: ranged.RangedObject | None = None

    @property
    def fetched(self) -> int:
        """Bytes fetched from object storage for this segment (0 for a local or cached file)."""
        return self.ranged.fetched if self.ranged is not None else 0


@contextlib.contextmanager
def segment_input(asset: Asset, container: str, span: tuple[int, int], cfg: StorageConfig) -> Iterator[SegmentInput]:
    """One segment's input: a local or cached copy when there is one, else the object read in
    ranges around `span` (the segment's SegmentPlan byte range), else the whole object fetched."""
    if not is_s3(asset.uri) or container not in RANGED_CONTAINERS or span[0] < 0:
        yield SegmentInput(local_input(asset, cfg))
        return
    hit = _cached(asset, cfg)
    if hit is not None:
        yield SegmentInput(hit)
        return
    with _ranged(asset, cfg, span) as obj:
        yield SegmentInput(obj, obj)


@contextlib.contextmanager
def header_input(asset: Asset, cfg: StorageConfig) -> Iterator[ranged.RangedObject | None]:
    """The object read in ranges, for a reader of its header and a few packets (planning an
    MP4/MOV from its sample tables); None for a local file or one already cached on this node."""
    if not is_s3(asset.uri) or _cached(asset, cfg) is not None:
        yield None
        return
    with _ranged(asset, cfg, (-1, -1)) as obj:
        yield obj


def _cached(asset: Asset, cfg: StorageConfig) -> str | None:
    return _cache(scratch_root(cfg), int(cfg.scratch_max_gb * 2**30)).cached(asset.uri, asset.version)


@contextlib.contextmanager
def _ranged(asset: Asset, cfg: StorageConfig, span: tuple[int, int]) -> Iterator[ranged.RangedObject]:
    root = scratch_root(cfg)
    _, bucket, key = parse_uri(asset.uri)
    os.makedirs(os.path.join(root, "ranges"), exist_ok=True)
    local = os.path.join(root, "ranges", uuid.uuid4().hex)
    with ranged.RangedObject(s3.s3_client(cfg), bucket, key, asset.version, asset.size, local, span) as obj:
        yield obj


@contextlib.contextmanager
def output_target(dst: str, cfg: StorageConfig) -> Iterator[str]:
    """A local path to write a finished file to; published to `dst` when the block succeeds.

    Local destinations are written in place (the writers rename atomically themselves).
    """
    if not is_s3(dst):
        yield dst
        return
    staged = os.path.join(scratch_root(cfg), "outgoing", f"{uuid.uuid4().hex}{os.path.splitext(dst)[1]}")
    os.makedirs(os.path.dirname(staged), exist_ok=True)
    try:
        yield staged
        storage.publish_file(staged, dst, cfg)
    finally:
        with contextlib.suppress(OSError):
            os.remove(staged)


def remove_tree(root: str, cfg: StorageConfig) -> None:
    """Delete everything under a folder or prefix of ours (parts of a run)."""
    for uri in list(storage.list_uris(root, cfg)):
        storage.remove(uri, cfg)
    if not is_s3(root):
        for dirpath, _, _ in sorted(os.walk(root), reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
