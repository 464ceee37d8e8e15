"""Everything that talks to an S3-compatible store (boto3): client, listing, downloads, uploads.

boto3 rather than pyarrow.fs: listing must stream and carry ETags (pyarrow's FileInfo has none and
its Python API returns a whole listing at once), and publishing needs multipart abort semantics.
Credentials come only from boto3's default chain (env, profile, instance role): nothing here
reads or logs them.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError
from s3transfer.exceptions import S3DownloadFailedError
from s3transfer.subscribers import BaseSubscriber

from anon_ray.config import StorageConfig
from anon_ray.io import inventory
from anon_ray.io.inventory import INTERNAL_DIR
from anon_ray.io.uri import ObjectChangedError, folder, is_s3, parse_uri
from anon_ray.types import Asset

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# Objects above the threshold go up in parts; CompleteMultipartUpload is what makes them visible,
# so a failed or killed upload never shows a partial object under its key.
TRANSFER = TransferConfig(multipart_threshold=16 * MiB, multipart_chunksize=16 * MiB, max_concurrency=8)
# Larger than any sane single upload, so a live worker's upload is never aborted under it.
DEFAULT_STALE_UPLOAD_S = 6 * 3600

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


def not_found(exc: ClientError) -> bool:
    return _code(exc) in ("404", "NoSuchKey", "NotFound")


# --- listing ----------------------------------------------------------------------------------

def _kind(name: str) -> str:
    ext = inventory.extension(name)
    return "image" if ext in inventory.IMAGE_EXTS else "video" if ext in inventory.VIDEO_EXTS else ""


def _listed(rel: str) -> bool:
    """Same rules as inventory.list_local: every object, hidden names included, but the audit dir
    (and folder markers, the zero-byte `name/` keys consoles create, which are no files).

    '.' and '..' components are listed so that safe_join rejects them into an error row instead
    of skipping them silently.
    """
    *dirs, name = rel.split("/")
    return bool(name) and INTERNAL_DIR not in dirs


def _sniffed(client: BaseClient, bucket: str, key: str, size: int, etag: str) -> tuple[str, str]:
    """(kind, format or why it is unknown) of an object whose name is no supported media name,
    from its first bytes (one ranged GET): a photo named .jpeg_large or a clip named .bin is
    still processed."""
    if not size:
        return "unknown", "empty object (0 bytes)"
    try:
        body = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{inventory.SNIFF_BYTES - 1}",
                                 IfMatch=etag)["Body"]
        with body:
            kind, fmt = inventory.sniff(body.read(), key)
    except ClientError as exc:
        return "unknown", f"cannot read its first bytes: {_code(exc)}"
    return kind, fmt or ("content is not a supported image or video" if kind == "unknown" else "")


def _asset(client: BaseClient, bucket: str, key: str, rel: str, size: int, etag: str) -> Asset:
    etag = etag.strip('"')
    kind, fmt = _kind(key), ""
    if not kind:
        kind, fmt = _sniffed(client, bucket, key, int(size), f'"{etag}"')
    return inventory.sorted_out(Asset(f"s3://{bucket}/{key}", rel, int(size), etag, kind), fmt, fmt)


def list_s3(uri: str, cfg: StorageConfig, exclude_prefix: str = "") -> Iterator[Asset]:
    """Stream the objects under `uri` page by page (never all keys at once).

    `exclude_prefix` (our output root) is skipped when it lies strictly inside the listed prefix,
    as list_local does; its keys are jumped over with StartAfter rather than paged through, so an
    output nested in the input does not double the listing time.
    """
    _, bucket, key = parse_uri(uri)
    client = s3_client(cfg)
    if key and not key.endswith("/"):
        try:
            head = client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if not not_found(exc):
                raise
        else:
            yield _asset(client, bucket, key, os.path.basename(key), head["ContentLength"], head["ETag"])
            return
    prefix = folder(key)
    skip = ""
    if exclude_prefix and is_s3(exclude_prefix):
        _, ex_bucket, ex_key = parse_uri(exclude_prefix)
        ex_folder = folder(ex_key.rstrip("/"))
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
                yield _asset(client, bucket, k, rel, obj["Size"], obj["ETag"])
        del contents


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


def download(client: BaseClient, bucket: str, key: str, etag: str, dst: str) -> None:
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




def abort_uploads(bucket: str, prefix: str, cfg: StorageConfig, older_than_s: float = 0.0,
                  exact_key: str = "") -> int:
    """Abort the multipart uploads under `prefix` (only those to `exact_key`, when given) started
    more than `older_than_s` ago: invisible as objects but billed as stored parts. Returns how many."""
    client = s3_client(cfg)
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
    aborted = 0
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
        for upload in page.get("Uploads", ()):
            if upload["Initiated"] >= cutoff or (exact_key and upload["Key"] != exact_key):
                continue
            try:
                client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            except ClientError as exc:
                if _code(exc) != "NoSuchUpload":  # another worker aborted it first
                    raise
                continue
            aborted += 1
    return aborted


def upload_file(local_path: str, bucket: str, key: str, cfg: StorageConfig) -> None:
    # upload_file aborts its multipart upload on any failure (s3transfer's failure cleanup);
    # a killed process leaves only an invisible in-progress upload for abort_uploads.
    s3_client(cfg).upload_file(local_path, bucket, key, Config=TRANSFER)


def list_keys(bucket: str, prefix: str, cfg: StorageConfig) -> Iterator[str]:
    """Every key under `prefix` as an s3:// URI, streamed page by page."""
    client = s3_client(cfg)
    request = {"Bucket": bucket, "Prefix": prefix}
    while True:
        response = client.list_objects_v2(**request)
        for obj in response.get("Contents", []):
            yield f"s3://{bucket}/{obj['Key']}"
        if not response.get("IsTruncated"):
            return
        request["ContinuationToken"] = response["NextContinuationToken"]
