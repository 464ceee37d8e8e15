"""io/ (storage, s3, scratch) against a real S3 endpoint: moto_server in a subprocess, boto3 over HTTP."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
import unicodedata
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig
from s3server import DUMMY_AWS_ENV, moto_s3_server

from anon_ray.config import StorageConfig
from anon_ray.io import s3, scratch, storage
from anon_ray.io.inventory import list_local
from anon_ray.io.uri import ObjectChangedError, is_s3, parse_uri
from anon_ray.types import Asset

REPO = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def endpoint():
    with moto_s3_server() as url:
        yield url


@pytest.fixture
def cfg(endpoint, monkeypatch) -> StorageConfig:
    for name, value in DUMMY_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    return StorageConfig(endpoint_url=endpoint, region="us-east-1")


@pytest.fixture
def bucket(cfg) -> str:
    name = f"t-{uuid.uuid4().hex[:16]}"
    s3.s3_client(cfg).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_calls(cfg):
    """Count S3 operations by name on the (cached) client; optionally fail one of them."""
    client = s3.s3_client(cfg)
    counts: dict[str, int] = {}
    lock = threading.Lock()
    hooks = {}

    def on_call(model, **_):
        with lock:
            counts[model.name] = counts.get(model.name, 0) + 1
            n = counts[model.name]
        if model.name in hooks:
            hooks[model.name](n)

    client.meta.events.register("before-call.s3", on_call)
    yield counts, hooks
    client.meta.events.unregister("before-call.s3", on_call)


def _put_many(cfg: StorageConfig, bucket: str, keys: list[str], body: bytes = b"x") -> None:
    client = s3.s3_client(cfg)
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=body), keys))


def test_parse_uri():
    assert parse_uri("s3://bkt/a/b.jpg") == ("s3", "bkt", "a/b.jpg")
    assert parse_uri("s3://bkt") == ("s3", "bkt", "")
    assert parse_uri("/data/x.mp4") == ("file", "", "/data/x.mp4")
    assert parse_uri("file:///data/x.mp4") == ("file", "", "/data/x.mp4")
    assert is_s3("s3://bkt/k") and not is_s3("rel/path")
    for bad in ("s3:///key", "gs://bkt/k"):
        with pytest.raises(ValueError):
            parse_uri(bad)


def test_client_is_cached_with_retries(cfg):
    client = s3.s3_client(cfg)
    assert s3.s3_client(StorageConfig(endpoint_url=cfg.endpoint_url, region=cfg.region)) is client
    assert client.meta.config.retries["mode"] == "standard"
    assert client.meta.config.retries["total_max_attempts"] == 6  # 5 retries after the first try
    assert client.meta.endpoint_url == cfg.endpoint_url


def _peaks(uri: str, cfg: StorageConfig, exclude: str) -> tuple[int, int, int]:
    """(count, tracemalloc peak while streaming, peak while holding every Asset)."""
    tracemalloc.start()
    try:
        count = sum(1 for _ in s3.list_s3(uri, cfg, exclude_prefix=exclude))
        stream_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        held = list(s3.list_s3(uri, cfg, exclude_prefix=exclude))
        held_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(held) == count
    return count, stream_peak, held_peak


def test_listing_streams_2500_keys(cfg, bucket):
    # Three pages of 1,000 keys; putting them into moto_server is most of the test's time.
    keys = [f"in/a/IMG_{i:05d}.jpg" for i in range(1000)] + [f"in/b/d{i % 40:02d}/IMG_{i:05d}.jpg"
                                                          for i in range(1000, 2500)]
    # Every file is listed (hidden ones and sidecars get their rows too), but the audit dirs and the output.
    unlisted = ["in/_anon_ray/x.jpg", "in/b/_anon_ray/y.mp4", "other/z.jpg"] + [
        f"in/out/d{i:02d}/IMG_{i:05d}.jpg" for i in range(20)]
    _put_many(cfg, bucket, keys + unlisted + ["in/notes.txt", "in/.hidden.jpg", "in/.cache/x.jpg", "in/b/clip.MP4"])
    uri, out = f"s3://{bucket}/in", f"s3://{bucket}/in/out/"

    t0 = time.perf_counter()
    assets = list(s3.list_s3(uri, cfg, exclude_prefix=out))
    seconds = time.perf_counter() - t0
    expected = {k[len("in/"):] for k in keys} | {"b/clip.MP4", "notes.txt", ".hidden.jpg", ".cache/x.jpg"}
    assert [a.relpath for a in assets] == sorted(expected)  # S3 order, each key once
    by_rel = {a.relpath: a for a in assets}
    etag = hashlib.md5(b"x").hexdigest()
    assert by_rel["a/IMG_00000.jpg"] == Asset(f"s3://{bucket}/in/a/IMG_00000.jpg", "a/IMG_00000.jpg", 1, etag, "image")
    assert by_rel["b/clip.MP4"].kind == "video" and by_rel[".hidden.jpg"].kind == "image"
    # Its first bytes ("x") are no media: listed, to be skipped with that reason.
    assert (by_rel["notes.txt"].skip, by_rel["notes.txt"].skip_detail) == (
        "not_media", "content is not a supported image or video")
    # Without the exclusion, or with an output that is not inside the input, it is listed like any input.
    assert sum(1 for _ in s3.list_s3(uri + "/", cfg)) == len(expected) + 20
    assert sum(1 for _ in s3.list_s3(uri, cfg, exclude_prefix=f"s3://{bucket}")) == len(expected) + 20
    del assets, by_rel

    # Streaming holds one page (1,000 keys) whatever the total; holding all grows with every key.
    n1, stream1, held1 = _peaks(f"s3://{bucket}/in/a", cfg, out)
    n_all, stream_all, held_all = _peaks(uri, cfg, out)
    assert (n1, n_all) == (1000, len(expected))
    print(f"\nlisting: {len(expected) / seconds:.0f} keys/s; tracemalloc peak streaming / holding all: "
          f"{n1} keys {stream1 / MiB:.2f} / {held1 / MiB:.2f} MiB, "
          f"{n_all} keys {stream_all / MiB:.2f} / {held_all / MiB:.2f} MiB")
    assert stream_all < held_all
    assert stream_all - stream1 < (held_all - held1) / 4


def test_list_single_object_and_missing_prefix(cfg, bucket):
    _put_many(cfg, bucket, ["in/a/clip.mov"])
    [asset] = s3.list_s3(f"s3://{bucket}/in/a/clip.mov", cfg)
    assert (asset.relpath, asset.kind, asset.uri) == ("clip.mov", "video", f"s3://{bucket}/in/a/clip.mov")
    assert list(s3.list_s3(f"s3://{bucket}/nothing", cfg)) == []
    # A prefix is a folder, not a string prefix: "in/a" must not list "in/ab/...".
    _put_many(cfg, bucket, ["in/ab/x.jpg"])
    assert [a.relpath for a in s3.list_s3(f"s3://{bucket}/in/a", cfg)] == ["clip.mov"]


def test_scratch_cache_hits_evicts_and_detects_changes(cfg, bucket, tmp_path, s3_calls):
    counts, _ = s3_calls
    for name, fill in (("a", b"a"), ("b", b"b"), ("c", b"c")):
        s3.s3_client(cfg).put_object(Bucket=bucket, Key=f"in/{name}.jpg", Body=fill * 1000)
    etags = {a.relpath: a.version for a in s3.list_s3(f"s3://{bucket}/in", cfg)}
    cache = scratch.ScratchCache(str(tmp_path / "cache"), max_bytes=2500)
    uri = lambda name: f"s3://{bucket}/in/{name}.jpg"  # noqa: E731

    pa = cache.fetch(uri("a"), etags["a.jpg"], cfg)
    assert Path(pa).read_bytes() == b"a" * 1000 and pa.endswith(".jpg")
    gets = counts["GetObject"]
    assert cache.fetch(uri("a"), etags["a.jpg"], cfg) == pa
    assert counts["GetObject"] == gets  # a hit makes no request
    time.sleep(0.01)
    pb = cache.fetch(uri("b"), etags["b.jpg"], cfg)
    time.sleep(0.01)
    cache.fetch(uri("a"), etags["a.jpg"], cfg)  # a is now more recent than b
    time.sleep(0.01)
    pc = cache.fetch(uri("c"), etags["c.jpg"], cfg)
    assert os.path.exists(pa) and os.path.exists(pc) and not os.path.exists(pb)  # b was least recent
    files = [p for p in (tmp_path / "cache").iterdir() if p.name != ".lock"]
    assert sum(p.stat().st_size for p in files) <= 2500 and len(files) == 2

    # b changes after listing: its old version cannot be fetched any more, and nothing is left behind.
    s3.s3_client(cfg).put_object(Bucket=bucket, Key="in/b.jpg", Body=b"B" * 1000)
    with pytest.raises(ObjectChangedError, match="changed since"):
        cache.fetch(uri("b"), etags["b.jpg"], cfg)
    assert not any(".part-" in p.name for p in (tmp_path / "cache").iterdir())
    assert Path(cache.fetch(uri("b"), "", cfg)).read_bytes() == b"B" * 1000  # '' = current version

    # Local inputs stay in place, with the same version check.
    local = tmp_path / "photo.jpg"
    local.write_bytes(b"x")
    [asset] = list_local(str(local))
    assert cache.fetch(asset.uri, asset.version, cfg) == asset.uri
    with pytest.raises(ObjectChangedError):
        cache.fetch(asset.uri, "0-0", cfg)


def test_scratch_cache_shared_by_threads_never_holds_half_files(cfg, bucket, tmp_path):
    bodies = {f"in/{i}.jpg": bytes([i]) * 50_000 for i in range(8)}
    for key, body in bodies.items():
        s3.s3_client(cfg).put_object(Bucket=bucket, Key=key, Body=body)
    versions = {a.uri: a.version for a in s3.list_s3(f"s3://{bucket}/in", cfg)}
    root = tmp_path / "cache"
    caches = [scratch.ScratchCache(str(root), max_bytes=200_000) for _ in range(6)]  # as separate actors would

    def work(n: int) -> None:
        order = sorted(versions, key=lambda u: hash((u, n)))
        for key_uri in order * 2:
            caches[n].fetch(key_uri, versions[key_uri], cfg)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(work, range(6)))
    left = [p for p in root.iterdir() if p.name != ".lock"]
    assert sum(p.stat().st_size for p in left) <= 200_000 and not any(".part-" in p.name for p in left)
    expected = {caches[0].path_for(u, v): bodies[u.split("/", 3)[3]] for u, v in versions.items()}
    for path in left:
        assert path.read_bytes() == expected[str(path)]  # whatever is cached is whole


def test_publish_file_is_atomic_and_aborts_on_failure(cfg, bucket, tmp_path, s3_calls, monkeypatch):
    counts, hooks = s3_calls
    monkeypatch.setattr(s3, "TRANSFER", TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB,
                                                           max_concurrency=2))
    src = tmp_path / "video.mp4"
    src.write_bytes(os.urandom(20 * MiB))
    dst = f"s3://{bucket}/out/sub/video.mp4"
    client = s3.s3_client(cfg)

    class Boom(Exception):
        pass

    def fail_third_part(n):
        if n == 3:
            raise Boom("network gone")

    hooks["UploadPart"] = fail_third_part
    with pytest.raises(Boom):
        storage.publish_file(str(src), dst, cfg)
    assert counts["CreateMultipartUpload"] == 1 and counts["AbortMultipartUpload"] == 1
    assert not storage.exists(dst, cfg)
    assert "Uploads" not in client.list_multipart_uploads(Bucket=bucket, Prefix="out/")
    assert "Contents" not in client.list_objects_v2(Bucket=bucket)  # no temporary keys either

    del hooks["UploadPart"]
    storage.publish_file(str(src), dst, cfg)
    head = client.head_object(Bucket=bucket, Key="out/sub/video.mp4")
    assert head["ContentLength"] == 20 * MiB and head["ETag"].strip('"').endswith("-4")
    # Round trip through the cache's ranged, IfMatch-guarded download.
    cache = scratch.ScratchCache(str(tmp_path / "cache"), 100 * MiB)
    assert Path(cache.fetch(dst, "", cfg)).read_bytes() == src.read_bytes()

    # The object changes between the ranged GETs of a large download: it fails, nothing is cached.
    first = counts["GetObject"]
    hooks["GetObject"] = lambda n: n == first + 3 and client.put_object(Bucket=bucket, Key="out/sub/video.mp4",
                                                                        Body=b"new")
    fresh = scratch.ScratchCache(str(tmp_path / "fresh"), 100 * MiB)
    with pytest.raises(ObjectChangedError):
        fresh.fetch(dst, head["ETag"].strip('"'), cfg)
    assert [p.name for p in (tmp_path / "fresh").iterdir()] == []


_KILLED_UPLOADER = """
import sys, time
from anon_ray.io import s3, storage
from anon_ray.config import StorageConfig
cfg = StorageConfig(endpoint_url=sys.argv[1], region="us-east-1")
events = s3.s3_client(cfg).meta.events
def stall_after_first(params, **_):
    if params["PartNumber"] > 1:
        time.sleep(120)
events.register("provide-client-params.s3.UploadPart", stall_after_first)
events.register("after-call.s3.UploadPart", lambda **_: print("part uploaded", flush=True))
storage.publish_file(sys.argv[2], sys.argv[3], cfg)
"""


def test_killed_upload_leaves_no_object_and_stale_upload_is_aborted(cfg, bucket, tmp_path):
    src = tmp_path / "big.mp4"
    src.write_bytes(b"\0" * (20 * MiB))
    dst = f"s3://{bucket}/out/big.mp4"
    env = {**os.environ, **DUMMY_AWS_ENV, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_UPLOADER, cfg.endpoint_url, str(src), dst],
                            stdout=subprocess.PIPE, env=env, cwd=REPO)
    try:
        assert proc.stdout.readline() == b"part uploaded\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    client = s3.s3_client(cfg)
    assert not storage.exists(dst, cfg)
    [upload] = client.list_multipart_uploads(Bucket=bucket, Prefix="out/")["Uploads"]
    assert len(client.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])["Parts"]) == 1
    # moto reports every upload as initiated in 2010, so only the direction of the age test is checked.
    assert storage.abort_stale_uploads(f"s3://{bucket}/out", cfg, older_than_s=1e10) == 0
    assert storage.abort_stale_uploads(f"s3://{bucket}/out", cfg) == 1
    assert "Uploads" not in client.list_multipart_uploads(Bucket=bucket, Prefix="out/")
    assert not storage.exists(dst, cfg)


def test_bytes_exists_remove_s3(cfg, bucket):
    uri = f"s3://{bucket}/out/_anon_ray/manifest.parquet"
    assert not storage.exists(uri, cfg)
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(uri, cfg)
    storage.write_bytes_atomic(uri, b"PAR1", cfg)
    assert storage.exists(uri, cfg) and storage.read_bytes(uri, cfg) == b"PAR1"
    storage.publish_bytes(b"v2", uri, cfg)
    assert storage.read_bytes(uri, cfg) == b"v2"
    storage.remove(uri, cfg)
    storage.remove(uri, cfg)  # already gone: not an error
    assert not storage.exists(uri, cfg)


def test_local_writes_are_atomic(tmp_path):
    cfg = StorageConfig()
    src = tmp_path / "part.mp4"
    src.write_bytes(b"video")
    dst = tmp_path / "out" / "a" / "b.mp4"
    storage.publish_file(str(src), str(dst), cfg)
    assert dst.read_bytes() == b"video" and src.exists()
    assert dst.stat().st_mode & 0o777 == 0o666 & ~_umask()
    with pytest.raises(FileNotFoundError):
        storage.publish_file(str(tmp_path / "missing.mp4"), str(tmp_path / "out" / "c.mp4"), cfg)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a"]  # no temp file, no c.mp4

    uri = str(tmp_path / "out" / "_anon_ray" / "m.parquet")
    storage.write_bytes_atomic(uri, b"one", cfg)
    storage.publish_bytes(b"two", uri, cfg)
    assert storage.exists(uri, cfg) and storage.read_bytes(uri, cfg) == b"two"
    storage.remove(uri, cfg)
    storage.remove(uri, cfg)
    assert not storage.exists(uri, cfg) and os.listdir(tmp_path / "out" / "_anon_ray") == []
    assert storage.abort_stale_uploads(str(tmp_path / "out"), cfg) == 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("rel", [
    "..", "../x.jpg", "a/../../b.jpg", "a/./b.jpg", "/abs/x.jpg", "a//b.jpg", "a/", "", "a\\..\\b.jpg",
    "a\x00.jpg", "a\n.jpg", "a\u202egpj.exe",  # NUL, control, bidi override
    "..\uff0fx.jpg", "a\uff0f..\uff0fb.jpg",  # full-width solidus
    "\u2024\u2024/x.jpg", "a/\u2024\u2024/b.jpg",  # one-dot leaders that NFKC turns into '..'
    "\uff0e\uff0e/x.jpg",  # full-width full stops
])
@pytest.mark.parametrize("root", ["s3://bkt/out", "/srv/out"])
def test_safe_join_rejects_escapes(root, rel):
    with pytest.raises(storage.UnsafePathError):
        storage.safe_join(root, rel)


def test_safe_join_accepts_normal_names():
    assert storage.safe_join("s3://bkt/out", "café/photo.jpg") == "s3://bkt/out/café/photo.jpg"
    assert storage.safe_join("s3://bkt/out/", "a/b.jpg") == "s3://bkt/out/a/b.jpg"
    assert storage.safe_join("s3://bkt", "a/b.jpg") == "s3://bkt/a/b.jpg"
    assert storage.safe_join("/srv/out", "café/photo.jpg") == "/srv/out/café/photo.jpg"
    nfd = unicodedata.normalize("NFD", "café/photo.jpg")  # as macOS writes names: kept byte for byte
    assert storage.safe_join("s3://bkt/out", nfd) == f"s3://bkt/out/{nfd}"
    for rel in ("写真/IMG 0001.jpg", "München/Straße..jpg", "..hidden-ish/x.jpg", "clip (1).mp4"):
        assert storage.safe_join("s3://bkt/out", rel) == f"s3://bkt/out/{rel}"
    with pytest.raises(storage.UnsafePathError, match="longer than"):
        storage.safe_join("s3://bkt/out", "x" * 1020 + ".jpg")
