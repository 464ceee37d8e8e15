"""Local paths and s3:// URIs behind one small API: the only module above which no code asks
where a file lives. Listing streams; writes appear under their final name only when complete (I1).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator

from botocore.exceptions import ClientError

from anon_ray.config import StorageConfig
from anon_ray.io import inventory, s3
from anon_ray.io.files import atomic_write, remove_quietly, temp_prefix
from anon_ray.io.uri import UnsafePathError, folder, is_s3, join, parse_uri, safe_join
from anon_ray.types import Asset

__all__ = ["UnsafePathError", "abort_leftovers", "abort_stale_uploads", "exists", "join", "list_assets",
           "list_uris", "local_copy", "make_dirs", "output_index", "parse_uri", "publish_bytes", "publish_file", "read_bytes",
           "remove", "remove_dir_if_empty", "safe_join", "unusable_reason", "write_bytes_atomic"]

log = logging.getLogger(__name__)

# Larger than any sane single upload, so a live worker's upload is never aborted under it.
DEFAULT_STALE_UPLOAD_S = 6 * 3600


# --- listing ----------------------------------------------------------------------------------

def list_assets(uri: str, cfg: StorageConfig, exclude: str = "") -> Iterator[Asset]:
    """The media under a folder, a prefix or one file, streamed in key order; `exclude` (the
    output root) is skipped when it lies inside."""
    if is_s3(uri):
        return s3.list_s3(uri, cfg, exclude_prefix=exclude)
    return inventory.list_local(uri, exclude=exclude)


def unusable_reason(asset: Asset) -> str:
    """Why an asset of unknown kind cannot be processed, for its error row."""
    return f"detected kind: {asset.kind}" if is_s3(asset.uri) else inventory.unusable_reason(asset.uri)


class OutputIndex:
    """Which outputs exist, for assets that arrive in key order, from one streamed listing.

    S3 lists keys in UTF-8 byte order (Python's str order), input and output alike, so a re-run
    checks its outputs with a merge against the output listing instead of one HEAD per asset.
    """

    def __init__(self, outputs: Iterator[Asset]):
        self._outputs = outputs
        self._current = next(self._outputs, None)

    def has(self, relpath: str) -> bool:
        while self._current is not None and self._current.relpath < relpath:
            self._current = next(self._outputs, None)
        return self._current is not None and self._current.relpath == relpath


def output_index(input_uri: str, output_uri: str, cfg: StorageConfig):
    """A check `(asset, dst) -> bool` that an asset's output exists, for a listing of `input_uri`.

    Between two object-store roots it merges with one listing of the outputs; elsewhere it asks
    for each output (a local stat, or a HEAD).
    """
    if is_s3(input_uri) and is_s3(output_uri):
        index = OutputIndex(s3.list_s3(output_uri, cfg))
        return lambda asset, dst: index.has(asset.relpath)
    return lambda asset, dst: exists(dst, cfg)


def list_uris(prefix_uri: str, cfg: StorageConfig) -> Iterator[str]:
    """Every object or file under a prefix (our own folders: manifest chunks, parts), streamed."""
    scheme, bucket, key = parse_uri(prefix_uri)
    if scheme == "file":
        for dirpath, _, files in os.walk(key):
            for name in sorted(files):
                yield os.path.join(dirpath, name)
        return
    yield from s3.list_keys(bucket, folder(key), cfg)


# --- reading and writing ----------------------------------------------------------------------

def publish_file(local_path: str, dst_uri: str, cfg: StorageConfig) -> None:
    """Make `local_path` appear at `dst_uri` complete or not at all; the source is left in place."""
    scheme, bucket, key = parse_uri(dst_uri)
    if scheme == "s3":
        s3.upload_file(local_path, bucket, key, cfg)
        return

    def copy(dst) -> None:
        with open(local_path, "rb") as src:
            shutil.copyfileobj(src, dst, 4 * s3.MiB)

    atomic_write(key, copy)


def write_bytes_atomic(uri: str, data: bytes, cfg: StorageConfig) -> None:
    scheme, bucket, key = parse_uri(uri)
    if scheme == "s3":
        s3.s3_client(cfg).put_object(Bucket=bucket, Key=key, Body=data)  # a single PUT is atomic
    else:
        atomic_write(key, lambda fh: fh.write(data))


def publish_bytes(data: bytes, dst_uri: str, cfg: StorageConfig) -> None:
    write_bytes_atomic(dst_uri, data, cfg)


def read_bytes(uri: str, cfg: StorageConfig) -> bytes:
    scheme, bucket, key = parse_uri(uri)
    if scheme == "file":
        with open(key, "rb") as fh:
            return fh.read()
    try:
        return s3.s3_client(cfg).get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if s3.not_found(exc):
            raise FileNotFoundError(uri) from None
        raise


@contextlib.contextmanager
def local_copy(uri: str, cfg: StorageConfig) -> Iterator[str]:
    """A local path holding the file at `uri` (itself when local, a temp download removed after),
    for readers that page through a large file instead of holding it; FileNotFoundError if absent."""
    scheme, bucket, key = parse_uri(uri)
    if scheme == "file":
        if not os.path.isfile(key):
            raise FileNotFoundError(uri)
        yield key
        return
    fd, tmp = tempfile.mkstemp(prefix=".anon-ray-copy-")
    os.close(fd)
    try:
        try:
            s3.s3_client(cfg).download_file(bucket, key, tmp)
        except ClientError as exc:
            if s3.not_found(exc):
                raise FileNotFoundError(uri) from None
            raise
        yield tmp
    finally:
        remove_quietly(tmp)


def exists(uri: str, cfg: StorageConfig) -> bool:
    scheme, bucket, key = parse_uri(uri)
    if scheme == "file":
        return os.path.exists(key)
    try:
        s3.s3_client(cfg).head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if s3.not_found(exc):
            return False
        raise
    return True


def remove(uri: str, cfg: StorageConfig) -> None:
    """Delete if present; a missing object is not an error (S3 DeleteObject is idempotent too)."""
    scheme, bucket, key = parse_uri(uri)
    if scheme == "s3":
        s3.s3_client(cfg).delete_object(Bucket=bucket, Key=key)
    else:
        remove_quietly(key)


def make_dirs(uri: str) -> None:
    """A local folder before files are written into it (object stores have none)."""
    if not is_s3(uri):
        os.makedirs(uri, exist_ok=True)


def remove_dir_if_empty(uri: str) -> None:
    if not is_s3(uri):
        with contextlib.suppress(OSError):
            os.rmdir(uri)


# --- what killed writers leave behind ---------------------------------------------------------

def abort_stale_uploads(prefix_uri: str, cfg: StorageConfig, older_than_s: float = DEFAULT_STALE_UPLOAD_S) -> int:
    """Abort multipart uploads under `prefix_uri` started more than `older_than_s` ago.

    Killed workers leave such uploads behind: invisible as objects but billed as stored parts.
    Returns how many were aborted. Local destinations have none.
    """
    scheme, bucket, key = parse_uri(prefix_uri)
    if scheme == "file":
        return 0
    aborted = s3.abort_uploads(bucket, folder(key), cfg, older_than_s=older_than_s)
    if aborted:
        log.info("aborted %d stale multipart uploads", aborted)
    return aborted


def abort_leftovers(dst: str, part_dir: str, cfg: StorageConfig) -> None:
    """After a writer was killed: remove its temporary files beside `dst` (local), or abort its
    multipart uploads to `dst` and under `part_dir` (object store). Best effort: the next run's
    abort_stale_uploads catches what this misses, and clean-up must not hide the asset's failure."""
    if not is_s3(dst):
        for tmp in glob.glob(glob.escape(temp_prefix(dst)) + "*"):
            remove_quietly(tmp)
        return
    for uri, exact in ((dst, True), (part_dir.rstrip("/") + "/" if part_dir else "", False)):
        if not uri:
            continue
        try:
            _, bucket, key = parse_uri(uri)
            s3.abort_uploads(bucket, key, cfg, exact_key=key if exact else "")
        except Exception as exc:  # noqa: BLE001
            log.warning("could not abort multipart uploads under %s: %s", uri, exc)
