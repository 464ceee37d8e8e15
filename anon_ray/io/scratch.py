"""A node-local cache of remote inputs, keyed by (URI, ETag) and bounded in bytes."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import time
import uuid
from collections.abc import Iterator

from anon_ray.config import StorageConfig
from anon_ray.io import s3
from anon_ray.io.files import remove_quietly
from anon_ray.io.uri import ObjectChangedError, parse_uri

_STALE_PART_S = 600  # a download's temp file untouched this long belongs to a dead process


@contextlib.contextmanager
def _flock(path: str) -> Iterator[None]:
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class ScratchCache:
    """Node-local copies of remote objects keyed by (uri, ETag), bounded in bytes, LRU by mtime.

    Several processes may share one root: a cached file appears only by rename once complete,
    and eviction runs under an fcntl lock so two processes never both count and delete. A file
    is evicted only when the cache is over its bound and it is the least recently fetched, so a
    path is safe to use right after fetch returns it unless the bound is smaller than the set of
    files in use at once.
    """

    _LOCK = ".lock"

    def __init__(self, root: str, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        os.makedirs(root, exist_ok=True)

    def path_for(self, uri: str, etag: str) -> str:
        digest = hashlib.sha256(f"{uri}\0{etag}".encode()).hexdigest()[:40]
        ext = os.path.splitext(parse_uri(uri)[2])[1].lower()
        # Decoders pick demuxers by extension; keep it only when it is a plain one.
        return os.path.join(self.root, digest + (ext if re.fullmatch(r"\.[a-z0-9]{1,8}", ext) else ""))

    def cached(self, uri: str, etag: str) -> str | None:
        """The cached copy of `uri` at `etag`, marked recently used, or None (nothing fetched)."""
        path = self.path_for(uri, etag)
        try:
            os.utime(path)
            return path
        except FileNotFoundError:
            return None

    def fetch(self, uri: str, etag: str, cfg: StorageConfig) -> str:
        """Local path holding `uri` at version `etag` ('' = its current version, one HEAD).

        Raises ObjectChangedError when the object no longer has that version. Local URIs are
        returned in place after the same version check (size-mtime_ns, as list_local sets it).
        """
        scheme, bucket, key = parse_uri(uri)
        if scheme == "file":
            st = os.stat(key)
            if etag and etag != f"{st.st_size}-{st.st_mtime_ns}":
                raise ObjectChangedError(f"{uri} changed since it was listed (version {etag})")
            return key
        client = s3.s3_client(cfg)
        if not etag:
            etag = client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
        hit = self.cached(uri, etag)
        if hit is not None:
            return hit
        path = self.path_for(uri, etag)
        tmp = f"{path}.part-{uuid.uuid4().hex}"
        try:
            s3.download(client, bucket, key, etag, tmp)
        except BaseException:
            remove_quietly(tmp)
            raise
        os.replace(tmp, path)
        self._evict(keep=path)
        return path

    def _evict(self, keep: str) -> None:
        with _flock(os.path.join(self.root, self._LOCK)):
            now = time.time()
            total = 0
            done: list[tuple[float, str, int]] = []
            for entry in os.scandir(self.root):
                if entry.name == self._LOCK or not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if ".part-" in entry.name:
                    # In-flight downloads count against the bound but belong to their process.
                    if now - st.st_mtime > _STALE_PART_S:
                        remove_quietly(entry.path)
                    else:
                        total += st.st_size
                    continue
                total += st.st_size
                done.append((st.st_mtime, entry.path, st.st_size))
            for _, path, size in sorted(done):
                if total <= self.max_bytes:
                    break
                if path != keep:
                    remove_quietly(path)
                    total -= size


