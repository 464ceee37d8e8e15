"""Three Ray nodes on one machine that share no disk: a head and two worker nodes started with
`ray start`, each with its own Ray temp dir and its own node-local scratch dir (TMPDIR, which the
node's worker processes inherit), and storage on a real S3 endpoint (moto_server), so no node can
read a file another node wrote. Workers need the custom resource `anon_worker`, which only the two
worker nodes have; the head runs the driver's light tasks.

A job runs undisturbed, then again while one worker node is killed (its process group and every
descendant, SIGKILL) as it runs a segment: the second run must finish on the nodes left, with
outputs byte-identical to the first, no partial object or upload, and nothing left in the
scratch dirs of the nodes that survive but their complete input cache.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import psutil
import pytest
from conftest import REPO, SAMPLES, s3_manifest_rows
from s3server import DUMMY_AWS_ENV, aws_env, moto_s3_server
from test_cut_independence import HAMILTON, MODELS
from test_ranged import moov_size, reencode
from test_ray_job import VENV_BIN, free_port

from anon_ray.config import AppConfig, SegmentConfig
from anon_ray.io import ranged
from anon_ray.run import lifecycle

pytestmark = pytest.mark.slow

BUCKET = "archive"
VIDEO = "in/cams/street.mp4"


class Node:
    """One `ray start --block` process group, with its own temp dir and scratch dir."""

    def __init__(self, name: str, root: Path, args: list[str], env: dict[str, str]):
        self.name = name
        self.tmpdir = root / name  # TMPDIR: the scratch dir is $TMPDIR/anon-ray-scratch
        self.tmpdir.mkdir()
        self.ray_tmp = Path(f"/tmp/anr-{secrets.token_hex(3)}")  # short: unix socket paths
        self.proc = subprocess.Popen(
            [VENV_BIN / "ray", "start", "--block", f"--temp-dir={self.ray_tmp}", "--disable-usage-stats", *args],
            env={**env, "TMPDIR": str(self.tmpdir)}, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @property
    def scratch(self) -> Path:
        return self.tmpdir / "anon-ray-scratch"

    def processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def running_segment(self) -> bool:
        for proc in self.processes():
            try:
                if (proc.cmdline() or [""])[0].startswith("ray::SegmentActor.segment"):
                    return True
            except psutil.Error:
                pass
        return False

    def kill(self) -> None:
        procs = self.processes()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for proc in procs:  # raylet's workers may sit in groups of their own
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def ray_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    # A node lost is noticed within seconds, not the default ~30 s.
    # This machine's own Ray token (~/.ray) must not leak in: the test cluster has one of its own.
    env.update(PATH=f"{VENV_BIN}:{env['PATH']}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),
               RAY_health_check_period_ms="1000",
               RAY_health_check_timeout_ms="1000", RAY_health_check_failure_threshold="3", **DUMMY_AWS_ENV)
    return env


def alive_nodes(address: str, env: dict[str, str]) -> int:
    code = ("import ray; ray.init(address=%r, log_to_driver=False); "
            "print(sum(n['Alive'] for n in ray.nodes()))" % address)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    return int(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else 0


@pytest.fixture(scope="module")
def street(tmp_path_factory) -> Path:
    """The hamilton clip with a keyframe every half second and a bitrate a camera would record at,
    so a segment's byte range is a part of the file, as on a real recording."""
    path = tmp_path_factory.mktemp("street") / "street.mp4"
    reencode(HAMILTON, path, frames=275, size=(640, 360), gop=15, crf=16)
    return path


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory, street):
    root = tmp_path_factory.mktemp("nodes")
    env = ray_env()
    port = free_port()
    address = f"127.0.0.1:{port}"
    with aws_env(), moto_s3_server() as url:
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        client.upload_file(str(street), BUCKET, VIDEO)
        client.upload_file(str(SAMPLES / "astronaut.jpg"), BUCKET, "in/photos/astronaut.jpg")
        nodes = [Node("head", root, ["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                                     f"--ray-client-server-port={free_port()}"], env)]
        try:
            for name in ("node_b", "node_c"):
                nodes.append(Node(name, root, [f"--address={address}", "--num-cpus=2",
                                               '--resources={"anon_worker": 2}'], env))
            deadline = time.time() + 180
            while alive_nodes(address, env) < 3:
                assert time.time() < deadline, "the three Ray nodes did not come up"
                assert all(n.proc.poll() is None for n in nodes), "a `ray start` exited"
                time.sleep(2)
            yield address, url, client, nodes, env
        finally:
            for node in reversed(nodes):
                node.stop()


def start_job(address: str, url: str, out: str, env: dict[str, str], tmpdir: Path) -> subprocess.Popen:
    tmpdir.mkdir(exist_ok=True)
    args = [sys.executable, "-m", "anon_ray", f"input=s3://{BUCKET}/in", f"output=s3://{BUCKET}/{out}",
            f"storage.endpoint_url={url}", "storage.region=us-east-1", f"cluster.address={address}",
            "cluster.workers=2", "cluster.cpus_per_worker=1", "+cluster.resources.anon_worker=1",
            "detect=faces_only", "segment.seconds=2", f"models.cache_dir={MODELS}"]
    return subprocess.Popen(args, cwd=REPO, env={**env, "TMPDIR": str(tmpdir)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(job: subprocess.Popen, timeout_s: float = 600) -> str:
    out, _ = job.communicate(timeout=timeout_s)
    assert job.returncode == 0, out[-4000:]
    return out


def objects(client, prefix: str) -> dict[str, bytes]:
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for o in page.get("Contents", []):
            found[o["Key"][len(prefix):]] = client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
    return found


def manifest(client, out: str) -> dict[str, dict]:
    return {r["relpath"]: r for r in s3_manifest_rows(client, BUCKET, out)}


def media(found: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in found.items() if not k.startswith("_anon_ray/")}


def leftovers(node: Node) -> list[str]:
    """What a run must not leave in a node's scratch dir: staged uploads, range files, partial downloads."""
    if not node.scratch.exists():
        return []
    bad = [p for sub in ("outgoing", "ranges") if (node.scratch / sub).exists() for p in (node.scratch / sub).iterdir()]
    bad += [p for p in node.scratch.rglob("*") if ".part-" in p.name]
    return [str(p) for p in bad]


def test_segments_spread_over_nodes_and_a_lost_node_changes_nothing(cluster3, street, tmp_path):
    address, url, client, nodes, env = cluster3
    finish(start_job(address, url, "calm", env, tmp_path / "driver1"))
    calm = objects(client, "calm/")
    assert set(media(calm)) == {"cams/street.mp4", "photos/astronaut.jpg"}
    row = manifest(client, "calm")["cams/street.mp4"]
    seg_nodes = json.loads(row["segment_nodes"])
    assert row["status"] == "ok" and row["segments"] >= 4
    assert len(seg_nodes) == row["segments"] and len(set(seg_nodes)) >= 2, seg_nodes
    fetched = json.loads(row["segment_input_bytes"])
    # The job's own cut (segment.seconds=2, a pool of 2): each segment fetched its byte range, not the file.
    cfg = AppConfig(segment=SegmentConfig(seconds=2))
    plans = lifecycle.plan_video(str(street), "cams/street.mp4", cfg, workers=2).segments
    header = moov_size(street)
    assert len(plans) == len(fetched)
    for seg, got in zip(plans, fetched):
        assert 0 < got <= 1.3 * (seg.byte_end - seg.byte_start) + header + 2 * ranged.BLOCK, (seg, got)
    assert max(fetched) < street.stat().st_size
    for node in nodes[1:]:
        assert node.scratch.is_dir(), f"{node.name} never used its own scratch dir"

    job = start_job(address, url, "shaken", env, tmp_path / "driver2")
    victim = nodes[1]
    deadline = time.time() + 300
    while not victim.running_segment():
        assert job.poll() is None, job.communicate()[0][-4000:]
        assert time.time() < deadline, "node_b never ran a segment"
        time.sleep(0.2)
    time.sleep(1.0)
    victim.kill()
    log = finish(job)
    shaken = objects(client, "shaken/")
    assert media(shaken) == media(calm), log[-3000:]  # byte-identical outputs
    rows = manifest(client, "shaken")
    assert {r["status"] for r in rows.values()} == {"ok"}, rows
    assert not any("/_anon_ray/tmp/" in f"/{k}" for k in shaken), [k for k in shaken if "tmp" in k]
    uploads = client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    assert not uploads, uploads
    for node in (nodes[0], nodes[2]):
        assert not leftovers(node), leftovers(node)
