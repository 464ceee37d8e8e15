"""Local paths and s3:// URIs behind one small API: streamed listing, an ETag-keyed scratch cache,
and writes that appear under their final name only when complete (invariant I1).

boto3 rather than pyarrow.fs: listing must stream and carry ETags (pyarrow's FileInfo has none and
its Python API returns a whole listing at once), and publishing needs multipart abort semantics.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError
from s3transfer.exceptions import S3DownloadFailedError
from s3transfer.subscribers import BaseSubscriber

from anon_ray.config import StorageConfig
from anon_ray.io.files import remove_quietly
from anon_ray.io.inventory import IMAGE_EXTS, INTERNAL_DIR, VIDEO_EXTS
from anon_ray.types import Asset

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# Objects above the threshold go up in parts; CompleteMultipartUpload is what makes them visible,
# so a failed or killed upload never shows a partial object under its key.
TRANSFER = TransferConfig(multipart_threshold=16 * MiB, multipart_chunksize=16 * MiB, max_concurrency=8)
_MAX_KEY_BYTES = 1024  # S3's limit: reject early with a clear error instead of a 400 at upload
_STALE_PART_S = 600  # a download's temp file untouched this long belongs to a dead process
# Larger than any sane single upload, so a live worker's upload is never aborted under it.
DEFAULT_STALE_UPLOAD_S = 6 * 3600
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class UnsafePathError(ValueError):
    """A relative path that could escape the output root or spoof another name."""


class ObjectChangedError(RuntimeError):
    """The object no longer has the version it was listed with."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def parse_uri(uri: str) -> tuple[str, str, str]:
    """('s3', bucket, key) for s3://bucket/key; ('file', '', path) for a path or file:// URI."""
    if is_s3(uri):
        bucket, _, key = uri[5:].partition("/")
        if not bucket:
            raise ValueError(f"no bucket in {uri!r}")
        return "s3", bucket, key
    if uri.startswith("file://"):
        return "file", "", uri[7:]
    if _SCHEME.match(uri):
        raise ValueError(f"unsupported URI scheme in {uri!r}")
    return "file", "", uri


# --- client -----------------------------------------------------------------------------------

_clients: dict[tuple, BaseClient] = {}
_clients_lock = threading.Lock()


def s3_client(cfg: StorageConfig) -> BaseClient:
    """One client per process and endpoint; clients are thread-safe but not fork-safe (pid in key).

    Credentials come only from boto3's default chain (env, profile, instance role): nothing here
    reads or logs them.
    """
    key = (os.getpid(), cfg.endpoint_url, cfg.region, cfg.addressing_style)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = _new_client(cfg)
    return client


def _new_client(cfg: StorageConfig) -> BaseClient:
    checksums = {}
    if cfg.endpoint_url:
        # S3-compatible stores (MinIO, Ceph, older releases) may reject the CRC trailers boto3
        # sends by default since 1.36; send checksums only where the API requires them.
        checksums = {"request_checksum_calculation": "when_required",
                     "response_checksum_validation": "when_required"}
    config = Config(
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=32,  # transfers (max_concurrency) plus listing/HEADs from other threads
        s3={"addressing_style": cfg.addressing_style} if cfg.addressing_style else {},
        **checksums,
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=cfg.endpoint_url or None, region_name=cfg.region or None, config=config
    )


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _not_found(exc: ClientError) -> bool:
    return _code(exc) in ("404", "NoSuchKey", "NotFound")


# --- listing ----------------------------------------------------------------------------------

def _kind(name: str) -> str:
    ext = os.path.splitext(name)[1].lower()
    return "image" if ext in IMAGE_EXTS else "video" if ext in VIDEO_EXTS else ""


def _listed(rel: str) -> bool:
    """Same rules as inventory.list_local: media extensions only, no hidden names, no audit dir.

    '.' and '..' components are not hidden files: such keys are listed so that safe_join rejects
    them into an error row instead of skipping them silently.
    """
    *dirs, name = rel.split("/")
    if not _kind(name) or name.startswith("."):
        return False
    return not any(d == INTERNAL_DIR or (d.startswith(".") and d not in (".", "..")) for d in dirs)


def _folder(key: str) -> str:
    """A key prefix as a folder: 'in' must not match 'inbox/...'."""
    return key if not key or key.endswith("/") else key + "/"


def _asset(bucket: str, key: str, rel: str, size: int, etag: str) -> Asset:
    return Asset(f"s3://{bucket}/{key}", rel, int(size), etag.strip('"'), _kind(key))


def list_s3(uri: str, cfg: StorageConfig, exclude_prefix: str = "") -> Iterator[Asset]:
    """Stream the media objects under `uri` page by page (never all keys at once).

    `exclude_prefix` (our output root) is skipped when it lies strictly inside the listed prefix,
    as list_local does; its keys are jumped over with StartAfter rather than paged through, so an
    output nested in the input does not double the listing time.
    """
    _, bucket, key = parse_uri(uri)
    client = s3_client(cfg)
    if key and not key.endswith("/") and _kind(key):
        try:
            head = client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if not _not_found(exc):
                raise
        else:
            yield _asset(bucket, key, os.path.basename(key), head["ContentLength"], head["ETag"])
            return
    prefix = _folder(key)
    skip = ""
    if exclude_prefix and is_s3(exclude_prefix):
        _, ex_bucket, ex_key = parse_uri(exclude_prefix)
        ex_folder = _folder(ex_key.rstrip("/"))
        if ex_bucket == bucket and ex_folder.startswith(prefix) and ex_folder != prefix:
            skip = ex_folder
    # Every key that starts with `skip` sorts at or before skip + the largest code point (S3 lists
    # in UTF-8 byte order), and nothing else does.
    jump = skip + "\U0010ffff"
    jumped = False
    base = {"Bucket": bucket, "Prefix": prefix}
    request: dict | None = base
    while request is not None:
        # Not botocore's paginator: it keeps the previous page alive while fetching the next,
        # doubling the peak. Here each page is dropped before the next request.
        response = client.list_objects_v2(**request)
        contents = response.pop("Contents", [])
        token = response.get("NextContinuationToken") if response.get("IsTruncated") else None
        request = {**base, "ContinuationToken": token} if token else None
        del response
        for obj in contents:
            k = obj["Key"]
            if skip and k.startswith(skip):
                if not jumped:
                    jumped, request = True, {**base, "StartAfter": jump}
                    break
                continue
            rel = k[len(prefix):]
            if _listed(rel):
                yield _asset(bucket, k, rel, obj["Size"], obj["ETag"])
        del contents


# --- scratch cache ----------------------------------------------------------------------------

@contextlib.contextmanager
def _flock(path: str) -> Iterator[None]:
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class _KnownVersion(BaseSubscriber):
    """Gives s3transfer the size and ETag already checked: it skips its own HEAD and sends the
    ETag as IfMatch with every ranged GET, so a change mid-download fails instead of mixing
    versions."""

    def __init__(self, size: int, etag: str) -> None:
        self.size = size
        self.etag = etag

    def on_queued(self, future, **kwargs) -> None:
        future.meta.provide_transfer_size(self.size)
        future.meta.provide_object_etag(self.etag)


def _download(client: BaseClient, bucket: str, key: str, etag: str, dst: str) -> None:
    """Download version `etag` of the object to `dst`; ObjectChangedError if it is not current.

    download_file refuses IfMatch in ExtraArgs and guards only ranged downloads, so small objects
    are one conditional GET here and large ones go through the transfer manager with the ETag.
    """
    quoted = f'"{etag}"'
    try:
        response = client.get_object(Bucket=bucket, Key=key, IfMatch=quoted)
        if response["ContentLength"] < TRANSFER.multipart_threshold:
            with response["Body"] as body, open(dst, "wb") as fh:
                shutil.copyfileobj(body, fh, MiB)
            return
        response["Body"].close()  # large: parallel ranged GETs instead of this one stream
        with create_transfer_manager(client, TRANSFER) as manager:
            manager.download(bucket, key, dst, subscribers=[_KnownVersion(response["ContentLength"], quoted)]).result()
        return
    except ClientError as exc:
        if _code(exc) not in ("412", "PreconditionFailed"):
            raise
    except S3DownloadFailedError:  # how s3transfer reports a 412 on one of its ranged GETs
        pass
    raise ObjectChangedError(f"s3://{bucket}/{key} changed since it was listed (ETag {etag})")


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
        client = s3_client(cfg)
        if not etag:
            etag = client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
        path = self.path_for(uri, etag)
        try:
            os.utime(path)  # a hit: mark it recently used
            return path
        except FileNotFoundError:
            pass
        tmp = f"{path}.part-{uuid.uuid4().hex}"
        try:
            _download(client, bucket, key, etag, tmp)
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


# --- writing ----------------------------------------------------------------------------------

def _write_local_atomic(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Write beside `path` under a hidden temp name, fsync, then rename over it."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)[:100]}.{uuid.uuid4().hex[:12]}.tmp")
    # os.open with 0o666 keeps the umask's permissions (mkstemp would force 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def publish_file(local_path: str, dst_uri: str, cfg: StorageConfig) -> None:
    """Make `local_path` appear at `dst_uri` complete or not at all; the source is left in place."""
    scheme, bucket, key = parse_uri(dst_uri)
    if scheme == "s3":
        # upload_file aborts its multipart upload on any failure (s3transfer's failure cleanup);
        # a killed process leaves only an invisible in-progress upload for abort_stale_uploads.
        s3_client(cfg).upload_file(local_path, bucket, key, Config=TRANSFER)
        return

    def copy(dst: BinaryIO) -> None:
        with open(local_path, "rb") as src:
            shutil.copyfileobj(src, dst, 4 * MiB)

    _write_local_atomic(key, copy)


def write_bytes_atomic(uri: str, data: bytes, cfg: StorageConfig) -> None:
    scheme, bucket, key = parse_uri(uri)
    if scheme == "s3":
        s3_client(cfg).put_object(Bucket=bucket, Key=key, Body=data)  # a single PUT is atomic
    else:
        _write_local_atomic(key, lambda fh: fh.write(data))


def publish_bytes(data: bytes, dst_uri: str, cfg: StorageConfig) -> None:
    write_bytes_atomic(dst_uri, data, cfg)


def read_bytes(uri: str, cfg: StorageConfig) -> bytes:
    scheme, bucket, key = parse_uri(uri)
    if scheme == "file":
        with open(key, "rb") as fh:
            return fh.read()
    try:
        return s3_client(cfg).get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if _not_found(exc):
            raise FileNotFoundError(uri) from None
        raise


def exists(uri: str, cfg: StorageConfig) -> bool:
    scheme, bucket, key = parse_uri(uri)
    if scheme == "file":
        return os.path.exists(key)
    try:
        s3_client(cfg).head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _not_found(exc):
            return False
        raise
    return True


def remove(uri: str, cfg: StorageConfig) -> None:
    """Delete if present; a missing object is not an error (S3 DeleteObject is idempotent too)."""
    scheme, bucket, key = parse_uri(uri)
    if scheme == "s3":
        s3_client(cfg).delete_object(Bucket=bucket, Key=key)
    else:
        remove_quietly(key)


def abort_stale_uploads(prefix_uri: str, cfg: StorageConfig, older_than_s: float = DEFAULT_STALE_UPLOAD_S) -> int:
    """Abort multipart uploads under `prefix_uri` started more than `older_than_s` ago.

    Killed workers leave such uploads behind: invisible as objects but billed as stored parts.
    Returns how many were aborted. Local destinations have none.
    """
    scheme, bucket, key = parse_uri(prefix_uri)
    if scheme == "file":
        return 0
    prefix = _folder(key)
    client = s3_client(cfg)
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
    aborted = 0
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
        for upload in page.get("Uploads", ()):
            if upload["Initiated"] >= cutoff:
                continue
            try:
                client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            except ClientError as exc:
                if _code(exc) != "NoSuchUpload":  # another worker aborted it first
                    raise
                continue
            aborted += 1
    if aborted:
        log.info("aborted %d stale multipart uploads", aborted)
    return aborted


# --- output paths -----------------------------------------------------------------------------

def _check_relpath(rel: str) -> None:
    if not rel:
        raise UnsafePathError("empty relative path")
    for ch in rel:
        # Cc: NUL and controls; Cf: invisible format chars (bidi overrides, zero-width); Cs: lone
        # surrogates from undecodable bytes.
        if ch == "\\" or unicodedata.category(ch) in ("Cc", "Cf", "Cs"):
            raise UnsafePathError(f"character U+{ord(ch):04X} not allowed in {rel!r}")
    # Compatibility forms (full-width solidus, one-dot leader, ...) look like other names or
    # separators once anything normalizes them. Compare against NFC, not the raw string, so
    # decomposed accents (macOS-style NFD names) stay valid.
    if unicodedata.normalize("NFKC", rel) != unicodedata.normalize("NFC", rel):
        raise UnsafePathError(f"look-alike Unicode (changes under NFKC) in {rel!r}")
    if rel.startswith("/"):
        raise UnsafePathError(f"absolute path {rel!r}")
    if any(part in ("", ".", "..") for part in rel.split("/")):
        raise UnsafePathError(f"empty, '.' or '..' component in {rel!r}")


def safe_join(output_root_uri: str, relpath: str) -> str:
    """`relpath` mirrored under the output root; raises UnsafePathError if it could escape it."""
    _check_relpath(relpath)
    if not is_s3(output_root_uri):
        return os.path.join(parse_uri(output_root_uri)[2], relpath)
    _, bucket, root = parse_uri(output_root_uri)
    root = root.rstrip("/")
    key = f"{root}/{relpath}" if root else relpath
    if len(key.encode()) > _MAX_KEY_BYTES:
        raise UnsafePathError(f"key longer than {_MAX_KEY_BYTES} bytes: {relpath!r}")
    return f"s3://{bucket}/{key}"


def join(root_uri: str, *parts: str) -> str:
    """Join trusted path parts (our own names, not user input: see safe_join) under a root."""
    if is_s3(root_uri):
        return "/".join([root_uri.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(root_uri, *parts)


def list_uris(prefix_uri: str, cfg: StorageConfig) -> Iterator[str]:
    """Every object or file under a prefix (our own folders: manifest chunks, parts), streamed."""
    scheme, bucket, key = parse_uri(prefix_uri)
    if scheme == "file":
        for dirpath, _, files in os.walk(key):
            for name in sorted(files):
                yield os.path.join(dirpath, name)
        return
    client = s3_client(cfg)
    request = {"Bucket": bucket, "Prefix": _folder(key)}
    while True:
        response = client.list_objects_v2(**request)
        for obj in response.get("Contents", []):
            yield f"s3://{bucket}/{obj['Key']}"
        if not response.get("IsTruncated"):
            return
        request["ContinuationToken"] = response["NextContinuationToken"]
