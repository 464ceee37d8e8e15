"""Fault injection at job level (DESIGN.md I1, I4): the driver stopped by SIGTERM, a full output
disk, an object store that fails and stalls, a detector that returns NaN or raises, the per-asset
time limit of the in-process engine.

After each fault: no partial output under a final name, no temporary files or parts left, and
the manifest says what happened (an error row for the failed asset, rows for what finished).
Worker kills mid-segment (at any point, before anything is encoded, while encoding) and the Ray
engine's time limit are in test_ray_job.py; a process killed mid-upload at the storage level in
test_storage.py.
"""

from __future__ import annotations

import http.client
import http.server
import io
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

import av
import boto3
import cv2
import numpy as np
import onnxruntime as ort
import pytest
from conftest import REPO, SAMPLES, manifest_rows, s3_manifest_rows
from s3server import DUMMY_AWS_ENV, moto_s3_server

from anon_ray.config import AppConfig, StorageConfig
from anon_ray.io import storage
from anon_ray.io.files import TMP_MARKER
from anon_ray.run import job, lifecycle, pipeline
from anon_ray.run.deadline import Deadline
from anon_ray.run.local import run_local
from anon_ray.types import Asset, AssetResult, Failure

MODELS = REPO / "models" / "cache"
PROGRESS = re.compile(r"^\[\d+/\d+ assets")


def faces_only(cfg: AppConfig) -> AppConfig:
    """Plates are the slow detector and add nothing to these faults."""
    return replace(cfg, detect=replace(cfg.detect, plate=replace(cfg.detect.plate, enabled=False)),
                   models=replace(cfg.models, cache_dir=str(MODELS), manifest=str(REPO / "models" / "models.yaml")))


def leftovers(root: Path) -> list[Path]:
    """What a finished or stopped run must not leave: scratch folder, parts, temporary files,
    unfolded manifest chunks."""
    bad = []
    for p in root.rglob("*"):
        if p.name == "tmp" or p.name.startswith("part-") or TMP_MARKER in p.name or ".part-" in p.name:
            bad.append(p)
        elif p.name.startswith(".") or p.name.endswith(".tmp"):
            bad.append(p)
        elif p.parent.name in ("manifest", "tracks") and re.search(r"-\d{5}\.parquet$", p.name):
            bad.append(p)  # chunk files: ManifestWriter.close folds them into the run's file
    return bad


def media_outputs(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "_anon_ray" not in p.parts}


def latest_rows(out: Path) -> dict[str, dict]:
    """Latest row per relpath."""
    rows = manifest_rows(out)
    return {r["relpath"]: r for r in sorted(rows, key=lambda r: r["finished_at"])}


def check_manifest_true(out: Path, rows: dict[str, dict]) -> None:
    """Every ok row has its output, every output an ok row, no failed asset has an output."""
    ok = {k for k, r in rows.items() if r["status"] in ("ok", "skipped")}
    assert media_outputs(out) == ok, (media_outputs(out), rows)


# ---------------------------------------------------------------- SIGTERM to the driver


class Cli:
    """`python -m anon_ray` in a subprocess whose stderr lines are collected as they come."""

    def __init__(self, src: Path, out: Path, *overrides: str, grace_s: float | None = None):
        env = dict(os.environ)
        if grace_s is not None:
            env["ANON_RAY_STOP_GRACE_S"] = str(grace_s)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "anon_ray", f"input={src}", f"output={out}", "cluster.workers=1",
             "cluster.max_in_flight=2", "cluster.inline=false", "detect=faces_only", f"models.cache_dir={MODELS}",
             *overrides],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_for(self, pattern: str | re.Pattern, timeout_s: float = 180) -> str:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while True:
                for line in self.lines:
                    if regex.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not self.reader.is_alive():
                    pytest.fail(f"no line matching {regex.pattern!r}; stderr:\n" + "\n".join(self.lines[-40:]))
                self.cond.wait(min(left, 0.5))

    def finish(self, timeout_s: float = 180) -> tuple[int, str]:
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail("anon-ray did not exit:\n" + "\n".join(self.lines[-40:]))
        self.reader.join(10)
        self.proc.stdout.close()
        return self.proc.returncode, "\n".join(self.lines)


@pytest.fixture
def mixed_input(tmp_path) -> Path:
    """8 assets: 2 short videos (75 frames, audio) and 6 photos, listed in name order."""
    src = tmp_path / "in"
    src.mkdir()
    astro = cv2.imread(str(SAMPLES / "astronaut.jpg"))
    for i, name in enumerate(["a.jpg", "d.jpg", "e.jpg", "f.jpg", "g.jpg", "h.jpg"]):
        cv2.imwrite(str(src / name), cv2.resize(astro, (256 + 16 * i, 256 + 16 * i)))
    shutil.copy(SAMPLES / "astronaut_pan.mp4", src / "b_clip.mp4")
    shutil.copy(SAMPLES / "astronaut_pan.mp4", src / "c_clip.mp4")
    return src


def stop_state(out: Path, total: int) -> dict[str, dict]:
    """What must hold after a stopped run; returns the manifest rows."""
    assert not leftovers(out), leftovers(out)
    rows = latest_rows(out)
    check_manifest_true(out, rows)
    assert len(rows) < total, "the stop took no effect: every asset was processed"
    for name, row in rows.items():
        assert row["status"] == "ok" or row["error_class"] == job.INTERRUPTED, row
    return rows


@pytest.mark.slow
def test_sigterm_finishes_in_flight_assets_and_takes_no_new_ones(mixed_input, tmp_path):
    out = tmp_path / "out"
    cli = Cli(mixed_input, out, grace_s=300)
    cli.wait_for(PROGRESS)
    cli.proc.send_signal(signal.SIGTERM)
    code, err = cli.finish()
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert "SIGTERM received: taking no new assets" in err
    assert "stopped by SIGTERM before the job was done" in err
    rows = stop_state(out, 8)
    # Within the grace period every asset in flight finished: nothing was cancelled.
    assert {r["status"] for r in rows.values()} == {"ok"}, rows
    assert "INTERRUPTED" not in err


@pytest.mark.slow
def test_second_sigterm_cancels_in_flight_and_rerun_completes(mixed_input, tmp_path):
    out = tmp_path / "out"
    cli = Cli(mixed_input, out, grace_s=300)
    cli.wait_for(PROGRESS)  # a.jpg is done; b_clip.mp4 (and c_clip.mp4) are being worked on
    cli.proc.send_signal(signal.SIGTERM)
    cli.wait_for("SIGTERM received")
    cli.proc.send_signal(signal.SIGTERM)
    code, err = cli.finish()
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert "SIGTERM again: cancelling" in err
    rows = stop_state(out, 8)
    interrupted = {k for k, r in rows.items() if r["error_class"] == job.INTERRUPTED}
    assert interrupted, f"no asset was in flight at the second signal: {rows}"
    assert not interrupted & media_outputs(out)
    done = {k for k, r in rows.items() if r["status"] == "ok"}

    rerun = Cli(mixed_input, out)
    code, err = rerun.finish()
    assert code == 0, err[-3000:]
    assert f"{8 - len(done)} ok, 0 failed, {len(done)} skipped" in err
    assert media_outputs(out) == {p.name for p in mixed_input.iterdir()}
    assert not leftovers(out)
    assert {r["status"] for r in latest_rows(out).values()} <= {"ok", "skipped"}


# ---------------------------------------------------------------- a full output disk


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs, mounted for the test (needs CAP_SYS_ADMIN: root in a privileged sandbox)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip() or proc.returncode}); "
                    "the full-disk test needs root with CAP_SYS_ADMIN")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _noise_video(path: Path, frames: int = 20) -> None:
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 640, 360, "yuv420p"
        s.options = {"crf": "18", "preset": "ultrafast"}
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (360, 640, 3), np.uint8), format="rgb24")
            c.mux(s.encode(frame))
        c.mux(s.encode())


def test_full_disk_fails_only_what_does_not_fit(small_disk, tmp_path):
    src, out = tmp_path / "in", small_disk / "out"
    src.mkdir()
    astro = cv2.imread(str(SAMPLES / "astronaut.jpg"))
    cv2.imwrite(str(src / "a.jpg"), astro)
    rng = np.random.default_rng(1)
    cv2.imwrite(str(src / "b_noise.png"), rng.integers(0, 256, (1100, 1100, 3), np.uint8))  # ~3.6 MB of PNG
    cv2.imwrite(str(src / "c.jpg"), cv2.flip(astro, 1))
    _noise_video(src / "d_noise.mp4")  # re-encoded at crf 18: several MB of parts
    shutil.copy(SAMPLES / "astronaut_pan.mp4", src / "e_clip.mp4")
    summary = job.run(faces_only(AppConfig(input=str(src), output=str(out))), run_local, out=io.StringIO())
    assert (summary.ok, summary.failed) == (3, 2), summary.failures
    rows = latest_rows(out)
    for name in ("b_noise.png", "d_noise.mp4"):
        row = rows[name]
        assert row["status"] == "failed" and "No space left on device" in row["error"], row
    check_manifest_true(out, rows)
    assert media_outputs(out) == {"a.jpg", "c.jpg", "e_clip.mp4"}
    assert not leftovers(out), leftovers(out)
    # What failed gave its space back: only the outputs and the manifest remain.
    used = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert shutil.disk_usage(small_disk).used <= used + 64 * 1024


# ---------------------------------------------------------------- an object store that fails and stalls


@dataclass
class Fault:
    """Requests whose method and unquoted path match: delayed, and answered 500 for the first
    `fail` of them (-1: always)."""

    method: str
    key: str  # a substring of the path (bucket/key)
    fail: int = 0
    delay_s: float = 0.0
    seen: int = 0


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of moto_server that injects S3 faults."""

    _HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "expect"}

    def __init__(self, upstream: str):
        self.upstream = urlsplit(upstream)
        self.faults: list[Fault] = []
        self.log: list[tuple[str, str, int, float]] = []  # (method, path, status, time.monotonic())
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        chunk = self.rfile.read(size + 2)[:size]
                        if not size:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return data
                        data += chunk
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                path = unquote(urlsplit(self.path).path)
                fault = proxy._match(self.command, path)
                if fault is not None and fault.delay_s:
                    time.sleep(fault.delay_s)
                if fault is not None and (fault.fail < 0 or fault.seen <= fault.fail):
                    self._send(500, {"Content-Type": "application/xml"},
                               b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InternalError</Code>"
                               b"<Message>We encountered an internal error. Please try again.</Message>"
                               b"<RequestId>injected</RequestId></Error>")
                    proxy._record(self.command, path, 500)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in proxy._HOP}
                headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    out = {k: v for k, v in resp.getheaders() if k.lower() not in proxy._HOP}
                finally:
                    conn.close()
                if self.command != "HEAD":
                    out["Content-Length"] = str(len(data))
                self._send(resp.status, out, data)
                proxy._record(self.command, path, resp.status)

            def _send(self, status: int, headers: dict, data: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _match(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.method == method and fault.key in path:
                    fault.seen += 1
                    return fault
        return None

    def _record(self, method: str, path: str, status: int) -> None:
        with self.lock:
            self.log.append((method, path, status, time.monotonic()))

    def count(self, method: str, key: str, status: int | None = None) -> int:
        with self.lock:
            return sum(1 for m, p, s, _ in self.log if m == method and key in p and status in (None, s))

    def times(self, method: str, key: str) -> list[float]:
        with self.lock:
            return [t for m, p, _, t in self.log if m == method and key in p]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def s3_env(monkeypatch):
    for name, value in DUMMY_AWS_ENV.items():
        monkeypatch.setenv(name, value)


def test_object_store_500s_and_slow_responses(s3_env, tmp_path):
    bucket = f"f-{uuid.uuid4().hex[:12]}"
    with moto_s3_server() as url:
        direct = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        direct.create_bucket(Bucket=bucket)
        astro = cv2.imread(str(SAMPLES / "astronaut.jpg"))
        for i, name in enumerate(["a_flaky.jpg", "b_broken.jpg", "c_slow.jpg"]):
            data = cv2.imencode(".jpg", cv2.resize(astro, (200 + 8 * i, 200 + 8 * i)))[1].tobytes()
            direct.put_object(Bucket=bucket, Key=f"in/{name}", Body=data)
        direct.put_object(Bucket=bucket, Key="in/d_clip.mp4", Body=(SAMPLES / "astronaut_pan.mp4").read_bytes())
        proxy = FaultProxy(url)
        proxy.faults = [
            Fault("GET", f"{bucket}/in/a_flaky.jpg", fail=2),  # transient: retried with backoff
            Fault("GET", f"{bucket}/in/b_broken.jpg", fail=-1),  # persistent: an error row
            Fault("GET", f"{bucket}/in/c_slow.jpg", delay_s=2.0),  # slow, within read_timeout
            Fault("PUT", f"{bucket}/out/c_slow.jpg", fail=1, delay_s=1.0),  # the output upload
            Fault("GET", f"{bucket}/in/d_clip.mp4", fail=1, delay_s=1.0),
            Fault("PUT", f"{bucket}/out/_anon_ray/tmp/", fail=1),  # the video's part upload
            Fault("PUT", f"{bucket}/out/_anon_ray/manifest", fail=1),  # a manifest chunk
        ]
        try:
            storage_cfg = StorageConfig(endpoint_url=proxy.url, region="us-east-1",
                                        scratch_dir=str(tmp_path / "scratch"))
            cfg = faces_only(AppConfig(input=f"s3://{bucket}/in", output=f"s3://{bucket}/out", storage=storage_cfg))
            started = time.monotonic()
            summary = job.run(cfg, run_local, out=io.StringIO())
            seconds = time.monotonic() - started
        finally:
            proxy.close()
        assert (summary.ok, summary.failed) == (3, 1), summary.failures
        [(name, error_class, error)] = summary.failures
        assert name == "b_broken.jpg" and error_class == "ClientError", summary.failures
        assert "InternalError" in error and "max retries" in error, error
        # botocore's standard retry mode with exponential backoff; `max_attempts` in a Config's
        # retries dict counts retries (io/s3.py sets 5): 6 attempts in all, then the error.
        assert proxy.count("GET", "in/b_broken.jpg") == 6
        tried = proxy.times("GET", "in/b_broken.jpg")
        # Backed off: jittered delays up to 0.05, 0.1, 0.2, 0.4, 0.8 s for server errors in current
        # botocore (a 1 s base, for throttling only; older releases used it for every error). Under
        # 0.1 s in all happens about once in 4,000 runs; six back-to-back requests take ~0.05 s.
        assert tried[-1] - tried[0] > 0.1, tried
        assert proxy.count("GET", "in/a_flaky.jpg", 500) == 2 and proxy.count("GET", "in/a_flaky.jpg", 200) == 1
        assert proxy.count("PUT", "out/c_slow.jpg", 500) == 1 and proxy.count("PUT", "out/c_slow.jpg", 200) == 1
        assert proxy.count("PUT", "out/_anon_ray/tmp/", 500) == 1
        keys = {o["Key"] for o in direct.list_objects_v2(Bucket=bucket, Prefix="out/").get("Contents", [])}
        assert {k for k in keys if "_anon_ray" not in k} == {"out/a_flaky.jpg", "out/c_slow.jpg", "out/d_clip.mp4"}
        runs = {k for k in keys if k.startswith("out/_anon_ray/runs/") and k.endswith(".json")}
        assert len(runs) == 1, keys  # the run's resolved config
        [run_id] = [k.rsplit("/", 1)[1].removesuffix(".json") for k in runs]
        assert keys - {"out/a_flaky.jpg", "out/c_slow.jpg", "out/d_clip.mp4"} - runs == \
            {f"out/_anon_ray/{d}/{run_id}.{ext}" for d, ext in
             (("manifest", "parquet"), ("tracks", "parquet"), ("done", "npz"))}, keys  # no parts, no chunks
        assert not direct.list_multipart_uploads(Bucket=bucket).get("Uploads")
        rows = {r["relpath"]: r for r in s3_manifest_rows(direct, bucket, "out")}
        assert rows["b_broken.jpg"]["status"] == "failed" and not rows["b_broken.jpg"]["output_uri"]
        assert all(rows[k]["status"] == "ok" for k in ("a_flaky.jpg", "c_slow.jpg", "d_clip.mp4"))
        scratch = [p for p in (tmp_path / "scratch").rglob("*") if p.is_file() and ".part-" in p.name]
        assert not scratch and not list((tmp_path / "scratch" / "outgoing").glob("*"))
        assert seconds < 120, seconds


# ---------------------------------------------------------------- detection that fails (fail-closed)


def test_nan_or_error_from_the_detector_fails_the_asset(tmp_path, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    astro = cv2.imread(str(SAMPLES / "astronaut.jpg"))
    cv2.imwrite(str(src / "a.jpg"), astro)  # 512x512: network input 512x512
    # The only 288x352 input: NaN (the video's regions are whole 64 px steps, or its full width/height).
    cv2.imwrite(str(src / "b_nan.jpg"), cv2.resize(astro, (352, 288)))
    cv2.imwrite(str(src / "c.jpg"), cv2.flip(astro, 1))
    shutil.copy(SAMPLES / "astronaut_pan.mp4", src / "d_clip.mp4")  # 640x360 -> 384x640: its 3rd batch fails
    real_run = ort.InferenceSession.run
    video_batches = 0

    def run(self, names, feed, *args, **kwargs):
        nonlocal video_batches
        outputs = real_run(self, names, feed, *args, **kwargs)
        shape = next(iter(feed.values())).shape[-2:]
        if shape == (288, 352):
            return [np.full_like(o, np.nan) for o in outputs]
        if shape == (384, 640):
            video_batches += 1
            if video_batches == 3:
                raise RuntimeError("injected ONNX Runtime failure")
        return outputs

    monkeypatch.setattr(ort.InferenceSession, "run", run)
    summary = job.run(faces_only(AppConfig(input=str(src), output=str(out))), run_local, out=io.StringIO())
    assert (summary.ok, summary.failed) == (2, 2), summary.failures
    rows = latest_rows(out)
    assert rows["b_nan.jpg"]["error_class"] == "DetectionError" and "NaN" in rows["b_nan.jpg"]["error"]
    assert rows["d_clip.mp4"]["error_class"] == "DetectionError"
    assert "injected ONNX Runtime failure" in rows["d_clip.mp4"]["error"]
    assert media_outputs(out) == {"a.jpg", "c.jpg"}
    check_manifest_true(out, rows)
    assert not leftovers(out), leftovers(out)


# ---------------------------------------------------------------- the time limit of the in-process engine


def test_local_engine_times_out_a_video_and_goes_on(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(SAMPLES / "astronaut_pan.mp4", src / "a_clip.mp4")  # 3 segments: seconds of detection
    shutil.copy(SAMPLES / "astronaut.jpg", src / "b.jpg")  # taken after the video, on a clock of its own
    limit = 0.3
    cfg = faces_only(AppConfig(input=str(src), output=str(out), asset_timeout_s=limit))
    summary = job.run(replace(cfg, segment=replace(cfg.segment, seconds=1.0)), run_local, out=io.StringIO())
    assert (summary.ok, summary.failed) == (1, 1), summary.failures
    rows = latest_rows(out)
    video = rows["a_clip.mp4"]
    assert (video["status"], video["error_class"]) == ("failed", "Timeout"), video
    assert video["error"] == "still open after asset_timeout_s=0.3 s"  # the Ray engine's words
    assert limit - 0.01 <= video["seconds"] < limit + 5, video  # stopped within a batch, not at the end
    assert rows["b.jpg"]["status"] == "ok", rows["b.jpg"]
    assert media_outputs(out) == {"b.jpg"}
    check_manifest_true(out, rows)
    assert not leftovers(out), leftovers(out)


@dataclass(frozen=True)
class ExpiresWhileEncoding(Deadline):
    """A deadline already past once `folder` holds a file: the part's, which the muxer creates at
    the first encoded packet."""

    folder: Path = Path()

    def check(self) -> None:
        if any(self.folder.iterdir()):
            super().check()


def test_time_running_out_mid_encode_leaves_no_part(tmp_path):
    clip = SAMPLES / "astronaut_pan.mp4"
    cfg = faces_only(AppConfig(output=str(tmp_path)))
    cfg = replace(cfg, segment=replace(cfg.segment, seconds=1.0))
    vplan = lifecycle.plan_video(str(clip), clip.name, cfg)
    parts = tmp_path / "parts"
    parts.mkdir()
    res = lifecycle.segment(pipeline.Worker(cfg), Asset(str(clip), clip.name, clip.stat().st_size, "v", "video"),
                             vplan.segments[0], vplan, str(parts / "part-00000.mp4"),
                             ExpiresWhileEncoding(-math.inf, 2.0, parts))
    assert res == Failure("Timeout", "still open after asset_timeout_s=2 s")
    assert not list(parts.iterdir())  # neither the part nor the file its encoder was writing


# ---------------------------------------------------------------- stop mechanics, without Ray or models


def _photos(src: Path, n: int) -> None:
    src.mkdir()
    data = (SAMPLES / "astronaut.jpg").read_bytes()
    for i in range(n):
        (src / f"p{i}.jpg").write_bytes(data)


def _copying_engine(stop_after: int | None, stop: job.StopRequest):
    """An engine that 'processes' an asset by copying it, and asks to stop after `stop_after`."""

    def engine(cfg, todo, run_id):
        for i, (asset, dst) in enumerate(todo, 1):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy(asset.uri, dst)
            yield AssetResult(asset, dst, frames=1)
            if i == stop_after:
                stop.request(signal.SIGTERM)

    return engine


def test_stop_ends_the_listing_keeps_finished_rows_and_rerun_completes(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    _photos(src, 5)
    cfg = faces_only(AppConfig(input=str(src), output=str(out)))
    stop = job.StopRequest()
    summary = job.run(cfg, _copying_engine(2, stop), out=io.StringIO(), stop=stop)
    assert (summary.ok, summary.failed, summary.interrupted) == (2, 0, 0)
    assert summary.stopped_by == signal.SIGTERM and summary.exit_code == 143
    rows = latest_rows(out)
    assert set(rows) == {"p0.jpg", "p1.jpg"} and not leftovers(out)
    check_manifest_true(out, rows)

    stop = job.StopRequest()
    summary = job.run(cfg, _copying_engine(None, stop), out=io.StringIO(), stop=stop)
    assert (summary.ok, summary.skipped, summary.exit_code) == (3, 2, 0)


def test_stop_after_the_last_asset_is_an_ordinary_end(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    _photos(src, 3)
    stop = job.StopRequest()
    summary = job.run(faces_only(AppConfig(input=str(src), output=str(out))), _copying_engine(3, stop),
                      out=io.StringIO(), stop=stop)
    assert (summary.ok, summary.stopped_by, summary.exit_code) == (3, 0, 0)


def test_interrupted_assets_are_counted_apart_and_give_the_signal_exit_code(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    _photos(src, 2)
    stop = job.StopRequest()

    def engine(cfg, todo, run_id):
        for asset, dst in todo:
            stop.request(signal.SIGINT)
            yield AssetResult(asset, dst, failure=Failure(job.INTERRUPTED, "stopped"))

    report = io.StringIO()
    summary = job.run(faces_only(AppConfig(input=str(src), output=str(out))), engine, out=report, stop=stop)
    assert (summary.ok, summary.failed, summary.interrupted, summary.exit_code) == (0, 0, 1, 130)
    assert "INTERRUPTED p0.jpg" in report.getvalue()
    assert latest_rows(out)["p0.jpg"]["error_class"] == job.INTERRUPTED


def test_stop_request_grace_and_second_signal():
    stop = job.StopRequest(grace_s=60)
    assert not stop.requested and not stop.urgent and stop.seconds_left() is None
    stop.request(signal.SIGTERM)
    assert stop.requested and not stop.urgent and 59 < stop.seconds_left() <= 60
    stop.request(signal.SIGINT)
    assert stop.urgent and stop.signum == signal.SIGTERM and stop.exit_code == 143
    assert job.StopRequest(grace_s=0).urgent is False  # nothing requested yet


def test_cli_signal_handler_sets_the_stop_and_is_removed_after(capfd):
    from anon_ray import cli

    before = signal.getsignal(signal.SIGTERM)
    stop = job.StopRequest(grace_s=5)
    with cli.graceful_stop(stop):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs between bytecodes of the main thread
        assert stop.requested and stop.count == 1
    assert signal.getsignal(signal.SIGTERM) is before
    assert "SIGTERM received: taking no new assets" in capfd.readouterr().err


def test_forced_close_aborts_the_killed_writers_uploads(s3_env):
    """A cancelled S3 asset's writer may die mid multipart upload: its uploads are aborted."""
    with moto_s3_server() as url:
        cfg = AppConfig(storage=StorageConfig(endpoint_url=url, region="us-east-1"))
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        client.create_bucket(Bucket="uploads")
        for key in ("out/a.mp4", "out/a.mp4.other.mp4", "out/_anon_ray/tmp/run/abc/part-00000.mp4"):
            client.create_multipart_upload(Bucket="uploads", Key=key)
        storage.abort_leftovers("s3://uploads/out/a.mp4", "s3://uploads/out/_anon_ray/tmp/run/abc", cfg.storage)
        left = [u["Key"] for u in client.list_multipart_uploads(Bucket="uploads").get("Uploads", [])]
        assert left == ["out/a.mp4.other.mp4"]  # another asset's upload is not touched
