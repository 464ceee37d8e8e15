"""Personal data and secrets (DESIGN.md I5): a real job with debug logging, credentials in its
environment and media with faces, a plate, EXIF GPS/camera and container tags; then every log
line, the Ray session logs, the manifest and tracks, and the outputs' metadata are searched for
what must not be there. And output paths never leave the output root, whatever the input keys.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import uuid
from dataclasses import replace
from pathlib import Path

import av
import boto3
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, SAMPLES, annotations, eval_root, manifest_rows, s3_manifest_rows
from PIL import Image
from s3server import DUMMY_AWS_ENV, aws_env, moto_s3_server

from anon_ray import cli
from anon_ray.config import AppConfig, StorageConfig
from anon_ray.io import s3, storage
from anon_ray.io.manifest import read_tracks
from anon_ray.run import job
from anon_ray.run.local import run_local

MODELS = REPO / "models" / "cache"

# Recognizable fake credentials: moto accepts any; none of them may show up anywhere.
FAKE_CREDS = {
    "AWS_ACCESS_KEY_ID": "AKIAPRIVACYTEST7Q3Z",
    "AWS_SECRET_ACCESS_KEY": "privacyTestSecret/9f8e7d6c5b4a3210ZYXWVU",
    "AWS_SESSION_TOKEN": "PrivacyTestSessionToken+abcdef0123456789xyz==",
}
CAMERA = {"make": "PrivacyMakeCorp", "model": "PrivacyCam 9000", "xmp": "PrivacyXmpCreator"}
GPS = {"lat": (52.0, 31.0, 12.34), "lon": (13.0, 24.0, 36.78)}
VIDEO_TAGS = {"title": "PrivacyTitleClip", "location": "+52.5201+013.4102/", "artist": "PrivacyArtistName",
              "com.apple.quicktime.make": CAMERA["make"], "com.apple.quicktime.model": CAMERA["model"]}
BASE64_RUN = re.compile(rb"[A-Za-z0-9+/]{200,}={0,2}")


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(DUMMY_AWS_ENV)
    env.update(FAKE_CREDS)
    env.update(extra)
    return env


# ---------------------------------------------------------------- media with known personal data


def _camera_jpeg(rgb: np.ndarray) -> bytes:
    """A JPEG with EXIF make/model/GPS and an XMP packet naming its creator and place."""
    exif = Image.Exif()
    exif[0x010F] = CAMERA["make"]
    exif[0x0110] = CAMERA["model"]
    exif[0x8825] = {1: "N", 2: GPS["lat"], 3: "E", 4: GPS["lon"]}
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", exif=exif.tobytes(), quality=92)
    data = buf.getvalue()
    xmp = (b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF "
           b"xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'><rdf:Description "
           b"xmlns:dc='http://purl.org/dc/elements/1.1/' xmlns:exif='http://ns.adobe.com/exif/1.0/' "
           b"exif:GPSLatitude='52,31.2057N' exif:GPSLongitude='13,24.6130E'><dc:creator>"
           + CAMERA["xmp"].encode() + b"</dc:creator></rdf:Description></rdf:RDF></x:xmpmeta>")
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(xmp) + 2) + xmp + data[2:]


def _tagged_clip(path: Path, frames: int = 12) -> None:
    """A short clip (astronaut pan frames, no audio) whose container carries identifying tags."""
    with av.open(str(SAMPLES / "astronaut_pan.mp4")) as src:
        rgb = [f.to_ndarray(format="rgb24") for _, f in zip(range(frames), src.decode(video=0))]
    with av.open(str(path), "w", options={"movflags": "use_metadata_tags"}) as out:
        out.metadata.update(VIDEO_TAGS)
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = rgb[0].shape[1], rgb[0].shape[0], "yuv420p"
        for frame in rgb:
            out.mux(s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(s.encode())
    with av.open(str(path)) as check:  # the input really carries them, or the test proves nothing
        assert VIDEO_TAGS["title"] == check.metadata.get("title") and check.metadata.get("location"), check.metadata


# A 1280x720 openalpr image whose plate (a 63x31 box) the default plate detector finds.
PLATE_FILE = "openalpr_us_1e241dc8-8f18-4955-8988-03a0ab49f813.jpg"


def _plate_image() -> tuple[Path, str]:
    """The openalpr image and its plate text, from the evaluation set's annotations."""
    plates = eval_root() / "plates"
    if not (plates / "annotations.jsonl").is_file():
        pytest.fail(f"plate evaluation data not found at {plates} (set ANON_RAY_EVAL_DATA)")
    for rec in annotations(plates):
        if rec["file"] == PLATE_FILE and rec.get("meta", {}).get("plate_text"):
            return plates / rec["file"], rec["meta"]["plate_text"]
    pytest.fail(f"{PLATE_FILE} with its plate text is not in {plates / 'annotations.jsonl'}")


def _session_logs(ray_tmp: Path) -> list[Path]:
    return [p for p in ray_tmp.glob("ray/session_*/logs/**/*") if p.is_file()]


def _strings(table: pa.Table) -> list[str]:
    out = []
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            out.extend(v for v in column.to_pylist() if v)
    return out


@pytest.fixture(scope="module")
def privacy_run(tmp_path_factory):
    """One `anon-ray` run, S3 input (so credentials are used by driver and workers), local output."""
    work = tmp_path_factory.mktemp("privacy")
    out, scratch = work / "out", work / "scratch"
    plate_path, plate_text = _plate_image()
    # Ray's unix sockets live under its temp dir: keep the path short.
    ray_tmp = Path(tempfile.mkdtemp(prefix="arp", dir="/tmp"))
    try:
        with aws_env(FAKE_CREDS), moto_s3_server() as url:
            client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
            client.create_bucket(Bucket="media")
            astro = cv2.imread(str(SAMPLES / "astronaut.jpg"))
            client.put_object(Bucket="media", Key="in/people/astro.jpg", Body=(SAMPLES / "astronaut.jpg").read_bytes())
            client.put_object(Bucket="media", Key="in/people/camera.jpg",
                              Body=_camera_jpeg(cv2.flip(astro, 1)[:, :, ::-1].copy()))
            client.put_object(Bucket="media", Key="in/cars/car.jpg", Body=plate_path.read_bytes())
            _tagged_clip(work / "clip.mp4")
            client.put_object(Bucket="media", Key="in/clips/clip.mp4", Body=(work / "clip.mp4").read_bytes())
            proc = subprocess.run(
                [sys.executable, "-m", "anon_ray", "input=s3://media/in", f"output={out}", "cluster.workers=1",
                 "hydra.verbose=true", f"storage.endpoint_url={url}", "storage.region=us-east-1",
                 f"storage.scratch_dir={scratch}", f"models.cache_dir={MODELS}"],
                cwd=REPO, env=_env({"RAY_TMPDIR": str(ray_tmp)}), capture_output=True, timeout=400)
            yield {"proc": proc, "out": out, "scratch": scratch, "ray_tmp": ray_tmp, "plate_text": plate_text}
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _forbidden(plate_text: str) -> list[bytes]:
    values = [*FAKE_CREDS.values(), plate_text, CAMERA["make"], CAMERA["model"], CAMERA["xmp"],
              VIDEO_TAGS["title"], VIDEO_TAGS["location"], VIDEO_TAGS["artist"], "52,31.2057N", "13,24.6130E"]
    return [v.encode() for v in values]


@pytest.mark.slow
def test_job_ran_with_debug_logging(privacy_run):
    proc = privacy_run["proc"]
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, err[-4000:]
    assert "4 ok, 0 failed" in err
    assert " DEBUG anon_ray: " in err, "debug logging was not on"
    rows = manifest_rows(privacy_run["out"])
    by_name = {r["relpath"]: r for r in rows}
    assert by_name["people/astro.jpg"]["faces"] >= 1 and by_name["cars/car.jpg"]["plates"] >= 1


@pytest.mark.slow
def test_no_secrets_or_personal_data_in_logs(privacy_run):
    proc = privacy_run["proc"]
    logs = {"stdout": proc.stdout, "stderr": proc.stderr}
    session = _session_logs(privacy_run["ray_tmp"])
    assert any(p.name.startswith("worker-") for p in session), f"no Ray worker logs found: {session[:20]}"
    assert any("driver" in p.name for p in session), f"no Ray driver log found: {session[:20]}"
    logs.update({str(p.relative_to(privacy_run["ray_tmp"])): p.read_bytes() for p in session})
    forbidden = _forbidden(privacy_run["plate_text"])
    for name, data in logs.items():
        for value in forbidden:
            assert value not in data and value.lower() not in data.lower(), f"{value!r} found in {name}"
        run = BASE64_RUN.search(data)
        assert run is None, f"{name}: a {len(run.group())}-character base64-like run (pixels or a blob?)"
        assert b"array([[" not in data, f"{name}: a numpy array dump"


@pytest.mark.slow
def test_no_secrets_or_personal_data_in_manifest_and_tracks(privacy_run):
    audit = privacy_run["out"] / "_anon_ray"
    files = sorted(audit.rglob("*.parquet"))
    assert {p.parent.name for p in files} >= {"manifest", "tracks"}
    forbidden = _forbidden(privacy_run["plate_text"])
    for path in files:
        raw = path.read_bytes()
        text = "\n".join(_strings(pq.read_table(path))).encode()
        for value in forbidden:
            assert value not in raw and value not in text, f"{value!r} in {path.name}"
    # The run's resolved config, saved beside the manifest, holds none of them either.
    [config] = (audit / "runs").glob("*.json")
    for value in forbidden:
        assert value not in config.read_bytes(), f"{value!r} in {config.name}"
    tracks = read_tracks(str(privacy_run["out"]), StorageConfig())
    assert tracks.num_rows and all(tracks.column(c).null_count == tracks.num_rows for c in ("x1", "y1", "x2", "y2"))


@pytest.mark.slow
def test_outputs_carry_no_identifying_metadata(privacy_run):
    out = privacy_run["out"]
    forbidden = _forbidden(privacy_run["plate_text"])
    for name in ("people/astro.jpg", "people/camera.jpg", "cars/car.jpg"):
        raw = (out / name).read_bytes()
        assert b"Exif\x00\x00" not in raw and b"http://ns.adobe.com/xap" not in raw, name
        for value in forbidden:
            assert value not in raw, f"{value!r} in {name}"
        with Image.open(io.BytesIO(raw)) as img:
            assert not img.getexif(), name
            assert not {"exif", "xmp", "XML:com.adobe.xmp"} & set(img.info), (name, set(img.info))
    clip = out / "clips" / "clip.mp4"
    raw = clip.read_bytes()
    for value in forbidden:
        assert value not in raw, f"{value!r} in clip.mp4"
    with av.open(str(clip)) as c:
        assert set(c.metadata) <= {"major_brand", "minor_version", "compatible_brands", "encoder"}, c.metadata
        for stream in c.streams:
            assert set(stream.metadata) <= {"language", "handler_name", "vendor_id", "encoder"}, stream.metadata
    # Staged uploads and downloads are transient: nothing of the outputs is left in scratch.
    assert not [p for p in (privacy_run["scratch"] / "outgoing").rglob("*") if p.is_file()]


def test_debug_logging_of_the_aws_sdk_is_redacted(tmp_path, monkeypatch, capsys):
    """Even with botocore's wire logging asked for by name, no credential reaches the log."""
    for k, v in {**DUMMY_AWS_ENV, **FAKE_CREDS}.items():
        monkeypatch.setenv(k, v)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, {n: logging.getLogger(n).level for n in cli._WIRE_LOGGERS})
    try:
        with moto_s3_server() as url:
            cli.setup_logging(["botocore", "anon_ray"])
            cfg = StorageConfig(endpoint_url=url, region="us-east-1")
            s3.s3_client(cfg).create_bucket(Bucket="redact")
            storage.write_bytes_atomic("s3://redact/x.bin", b"x", cfg)
            assert storage.read_bytes("s3://redact/x.bin", cfg) == b"x"
    finally:
        root.handlers[:], level, levels = saved
        root.setLevel(level)
        for name, lvl in levels.items():
            logging.getLogger(name).setLevel(lvl)
    err = capsys.readouterr().err
    assert "DEBUG botocore" in err and "Sending http request" in err, err[-2000:]
    for value in FAKE_CREDS.values():
        assert value not in err
    assert "X-Amz-Security-Token" in err and "Credential=" not in err.replace("Credential=***", "")


# ---------------------------------------------------------------- output paths stay under the output root


UNSAFE_KEYS = {
    "../escape.jpg": "'..'",  # parent directory
    "./dot.jpg": "'.'",
    "sub/../../up.jpg": "'..'",
    "/abs.jpg": "absolute",  # an empty first component: the key had a double slash
    "\uff0e\uff0e\uff0fwide.jpg": "look-alike",  # full-width '../'
    "\u2024\u2024/leader.jpg": "look-alike",  # one-dot leaders: '..' under NFKC
    "rtl\u202egpj.jpg": "U+202E",  # a bidi override that disguises the extension
}


@pytest.mark.parametrize("output_kind", ["s3", "local"])
def test_unsafe_keys_get_error_rows_and_nothing_outside_the_output_root(output_kind, tmp_path, monkeypatch):
    for k, v in DUMMY_AWS_ENV.items():
        monkeypatch.setenv(k, v)
    bucket = f"esc-{uuid.uuid4().hex[:10]}"
    photo = cv2.imencode(".jpg", cv2.resize(cv2.imread(str(SAMPLES / "astronaut.jpg")), (160, 160)))[1].tobytes()
    with moto_s3_server() as url:
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        client.create_bucket(Bucket=bucket)
        for rel in [*UNSAFE_KEYS, "ok.jpg"]:
            client.put_object(Bucket=bucket, Key=f"data/in/{rel}", Body=photo)
        root = tmp_path / "root"
        output = f"s3://{bucket}/data/out" if output_kind == "s3" else str(root / "out")
        storage_cfg = StorageConfig(endpoint_url=url, region="us-east-1", scratch_dir=str(tmp_path / "scratch"))
        cfg = AppConfig(input=f"s3://{bucket}/data/in", output=output, storage=storage_cfg)
        cfg = replace(cfg, detect=replace(cfg.detect, plate=replace(cfg.detect.plate, enabled=False)),
                      models=replace(cfg.models, cache_dir=str(MODELS), manifest=str(REPO / "models" / "models.yaml")))
        summary = job.run(cfg, run_local, out=io.StringIO())
        assert (summary.ok, summary.failed) == (1, len(UNSAFE_KEYS)), summary.failures
        failures = {name: (cls, err) for name, cls, err in summary.failures}
        for rel, why in UNSAFE_KEYS.items():
            cls, err = failures[rel]
            assert cls == "UnsafePath" and why in err, (rel, cls, err)
        keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}
        if output_kind == "s3":
            written = keys - {f"data/in/{rel}" for rel in [*UNSAFE_KEYS, "ok.jpg"]}
            assert all(k.startswith("data/out/") for k in written), written
            assert {k for k in written if "_anon_ray" not in k} == {"data/out/ok.jpg"}
            rows = s3_manifest_rows(client, bucket, "data/out")
        else:
            assert len(keys) == len(UNSAFE_KEYS) + 1  # nothing written to the bucket
            outside = [p for p in tmp_path.rglob("*") if p.is_file()
                       and not p.is_relative_to(root / "out") and not p.is_relative_to(tmp_path / "scratch")]
            assert not outside, outside
            assert {str(p.relative_to(root / "out")) for p in (root / "out").rglob("*")
                    if p.is_file() and "_anon_ray" not in p.parts} == {"ok.jpg"}
            rows = manifest_rows(root / "out")
    unsafe_rows = [r for r in rows if r["error_class"] == "UnsafePath"]
    assert len(unsafe_rows) == len(UNSAFE_KEYS) and all(not r["output_uri"] for r in unsafe_rows)
    json.dumps(rows)  # every text field is valid UTF-8 (no lone surrogates)
