"""A real S3 endpoint for tests: `moto_server` in its own process on 127.0.0.1.

A subprocess, not moto's in-process mocking: boto3 talks real HTTP to it, so retries, multipart
uploads and killed clients behave as against S3/MinIO. Nothing global is set here; tests put
`DUMMY_AWS_ENV` into the environment themselves (monkeypatch) and pass the endpoint in
StorageConfig(endpoint_url=...).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

# Dummy credentials, and no config file or instance-metadata lookup that could pick up real ones.
DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


@contextlib.contextmanager
def aws_env(extra: dict[str, str] | None = None) -> Iterator[None]:
    """DUMMY_AWS_ENV (plus `extra`) in os.environ for a module-scoped fixture, restored after."""
    values = {**DUMMY_AWS_ENV, **(extra or {})}
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
    except urllib.error.HTTPError:
        return True  # any HTTP status means the server is up
    except OSError:
        return False
    return True


@contextlib.contextmanager
def moto_s3_server(start_timeout_s: float = 30.0) -> Iterator[str]:
    """Start moto_server on a free loopback port; yield its endpoint URL; kill it on exit."""
    with tempfile.TemporaryFile() as logfile:
        for _ in range(3):  # another process may grab the free port before moto binds it
            port = _free_port()
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=logfile, stderr=subprocess.STDOUT,  # a file, not a pipe: a full pipe would stall it
            )
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + start_timeout_s
            while proc.poll() is None and time.monotonic() < deadline and not _answers(url):
                time.sleep(0.1)
            if proc.poll() is None and _answers(url):
                break
            proc.kill()
            proc.wait()
        else:
            logfile.seek(0)
            tail = logfile.read()[-2000:].decode(errors="replace")
            raise RuntimeError(f"moto_server did not start on 127.0.0.1:\n{tail}")
        try:
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
