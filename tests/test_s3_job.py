"""A whole job from one bucket prefix to another on a real S3 endpoint (moto_server over HTTP)."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import av
import boto3
import cv2
import pytest
from conftest import SAMPLES, s3_manifest_rows
from s3server import aws_env, moto_s3_server

from anon_ray.config import AppConfig, StorageConfig
from anon_ray.run import job
from anon_ray.run.local import run_local

N_PHOTOS = 50


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with aws_env(), moto_s3_server() as url:
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        client.create_bucket(Bucket="archive")
        astro = cv2.imread(str(SAMPLES / "astronaut.jpg"))
        for i in range(N_PHOTOS):
            crop = cv2.resize(astro, (160 + 2 * i, 160 + i))
            ok, data = cv2.imencode(".jpg", crop)
            client.put_object(Bucket="archive", Key=f"in/day{i % 3}/p{i:03d}.jpg", Body=data.tobytes())
        clip = (SAMPLES / "astronaut_pan.mp4").read_bytes()
        client.put_object(Bucket="archive", Key="in/videos/a.mp4", Body=clip)
        client.put_object(Bucket="archive", Key="in/videos/b.mp4", Body=clip)
        yield url, client, tmp_path_factory.mktemp("scratch")


def _cfg(url: str, scratch: Path) -> AppConfig:
    cfg = AppConfig(input="s3://archive/in", output="s3://archive/out",
                    storage=StorageConfig(endpoint_url=url, region="us-east-1", scratch_dir=str(scratch)))
    # The object-store path is what is under test: faces only keeps detection cheap.
    return replace(cfg, detect=replace(cfg.detect, plate=replace(cfg.detect.plate, enabled=False)))


def _keys(client, prefix: str) -> dict[str, str]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="archive", Prefix=prefix):
        out.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
    return out


def _manifest(client) -> list[dict]:
    return s3_manifest_rows(client, "archive", "out")


@pytest.fixture(scope="module")
def first_run(s3):
    url, client, scratch = s3
    summary = job.run(_cfg(url, scratch), run_local)
    return summary, _keys(client, "out/")


def test_bucket_to_bucket(s3, first_run):
    url, client, _ = s3
    summary, keys = first_run
    assert (summary.ok, summary.failed) == (N_PHOTOS + 2, 0)
    media = {k for k in keys if not k.startswith("out/_anon_ray/")}
    assert media == {k.replace("in/", "out/", 1) for k in _keys(client, "in/")}
    assert not [k for k in keys if "/tmp/" in k], "parts or temporary keys left behind"
    assert not client.list_multipart_uploads(Bucket="archive").get("Uploads")
    body = client.get_object(Bucket="archive", Key="out/videos/a.mp4")["Body"].read()
    with av.open(io.BytesIO(body)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 75 and c.streams.audio
    rows = _manifest(client)
    assert len(rows) == N_PHOTOS + 2 and {r["status"] for r in rows} == {"ok"}
    assert all(r["input_version"] and r["output_uri"].startswith("s3://archive/out/") for r in rows)


def test_rerun_writes_nothing_then_redoes_only_the_changed_object(s3, first_run):
    url, client, scratch = s3
    _, before = first_run
    summary = job.run(_cfg(url, scratch), run_local)
    assert (summary.ok, summary.failed, summary.skipped) == (0, 0, N_PHOTOS + 2)
    after = _keys(client, "out/")
    assert {k: v for k, v in after.items() if "_anon_ray" not in k} == \
        {k: v for k, v in before.items() if "_anon_ray" not in k}, "a skipped re-run rewrote outputs"

    astro = cv2.imread(str(SAMPLES / "astronaut.jpg"))
    ok, data = cv2.imencode(".jpg", cv2.flip(astro, 1))
    client.put_object(Bucket="archive", Key="in/day1/p001.jpg", Body=data.tobytes())
    summary = job.run(_cfg(url, scratch), run_local)
    assert (summary.ok, summary.skipped) == (1, N_PHOTOS + 1)
    changed = {k for k, v in _keys(client, "out/").items() if "_anon_ray" not in k and before.get(k) != v}
    assert changed == {"out/day1/p001.jpg"}
    rows = _manifest(client)
    assert [r["status"] for r in rows].count("ok") == N_PHOTOS + 2 + 1


def test_dry_run_lists_without_writing(s3, first_run, capsys):
    url, client, scratch = s3
    client.put_object(Bucket="archive", Key="in/new/fresh.jpg",
                      Body=cv2.imencode(".jpg", cv2.imread(str(SAMPLES / "astronaut.jpg")))[1].tobytes())
    before = _keys(client, "out/")
    summary = job.run(replace(_cfg(url, scratch), dry_run=True), run_local)
    assert summary.ok == 0
    assert "would process: new/fresh.jpg" in capsys.readouterr().err
    assert _keys(client, "out/") == before
    client.delete_object(Bucket="archive", Key="in/new/fresh.jpg")


def test_deleted_output_is_redone(s3, first_run):
    url, client, scratch = s3
    client.delete_object(Bucket="archive", Key="out/day2/p005.jpg")
    summary = job.run(_cfg(url, scratch), run_local)
    assert summary.ok == 1 and summary.failed == 0
    assert "out/day2/p005.jpg" in _keys(client, "out/")
