"""End to end on real media: photos and a video through job.run (in-process engine) and the CLI (Ray)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, SAMPLES, manifest_rows
from PIL import Image

from anon_ray.config import AppConfig, StorageConfig
from anon_ray.detect import Detector
from anon_ray.io import manifest
from anon_ray.media import packets
from anon_ray.media.decode import decode
from anon_ray.run import job
from anon_ray.run.local import run_local
from anon_ray.types import FACE, Asset, AssetResult, Failure

RESCAN_THRESHOLD = 0.3  # the re-scan's threshold since it was written (the job masks from 0.1)


def _cfg(src: Path, dst: Path, **kw) -> AppConfig:
    return replace(AppConfig(input=str(src), output=str(dst)), **kw)


def _gps_jpeg(path: Path, rgb: np.ndarray) -> None:
    img = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0110] = "SecretCam 3000"  # model
    exif[0x0112] = 1
    gps = {1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)}
    exif[0x8825] = gps
    img.save(path, "JPEG", exif=exif.tobytes(), quality=95)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory):
    src = tmp_path_factory.mktemp("in")
    out = tmp_path_factory.mktemp("out")
    astro = cv2.imread(str(SAMPLES / "astronaut.jpg"))[:, :, ::-1].copy()
    (src / "sub").mkdir()
    _gps_jpeg(src / "sub" / "astro_gps.jpg", astro)
    cv2.imwrite(str(src / "astro.png"), astro[:, :, ::-1])
    odd = cv2.resize(astro, (333, 301))
    cv2.imwrite(str(src / "odd.webp"), odd[:, :, ::-1], [cv2.IMWRITE_WEBP_QUALITY, 100])
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(2000))
    (src / "notes.txt").write_text("not media")
    cfg = _cfg(src, out)
    summary = job.run(cfg, run_local)
    return src, out, summary, astro


def test_photos_masked_and_clean(photo_run):
    src, out, summary, astro = photo_run
    assert (summary.ok, summary.failed) == (3, 1)
    assert summary.exit_code == 1
    assert not (out / "broken.jpg").exists(), "a failed asset must leave no output"
    assert not (out / "notes.txt").exists()
    masked = cv2.imread(str(out / "sub" / "astro_gps.jpg"))[:, :, ::-1]
    face = (slice(60, 168), slice(178, 268))  # eyebrows to chin
    diff = np.abs(masked[face].astype(int) - astro[face].astype(int)).mean()
    assert diff > 20, f"face region barely changed (mean abs diff {diff:.1f})"
    far = (slice(400, 512), slice(0, 150))  # the suit's arm, far from the face
    assert psnr(masked[far], astro[far]) > 35
    raw = (out / "sub" / "astro_gps.jpg").read_bytes()
    assert b"Exif" not in raw and b"SecretCam" not in raw and b"http://ns.adobe.com/xap" not in raw
    assert not Image.open(io.BytesIO(raw)).getexif()


def rescan_detector() -> Detector:
    """The job's face model, one whole-frame pass at a confident threshold: at the job's
    recall-first 0.1 CenterFace fires on the head's silhouette around a masked face (hair, ears,
    outline), even around a solid fill, not on recoverable features (README, "Masking rule"); and
    the 2x pass for small photos fires at 0.40 on the astronaut's suit collar (checked by eye)."""
    cfg = AppConfig()
    face = replace(cfg.detect.face, threshold=RESCAN_THRESHOLD, tiling=replace(cfg.detect.face.tiling, enabled=False))
    return Detector(replace(cfg.detect, face=face), cfg.models)


def test_masked_output_rescanned_has_no_face(photo_run):
    _, out, _, _ = photo_run
    detector = rescan_detector()
    for name in ("astro.png", "sub/astro_gps.jpg", "odd.webp"):
        rgb = cv2.imread(str(out / name))[:, :, ::-1].copy()
        dets = detector.detect([rgb])
        assert not np.any(dets.cls == FACE), f"{name}: a face is still detectable after masking"


def test_manifest_rows(photo_run):
    _, out, _, _ = photo_run
    table = manifest_rows(out)
    rows = {r["relpath"]: r for r in table}
    assert set(rows) == {"astro.png", "sub/astro_gps.jpg", "odd.webp", "broken.jpg", "notes.txt"}
    assert rows["broken.jpg"]["status"] == "failed" and rows["broken.jpg"]["error_class"]
    # A sidecar is accounted for, skipped as no media; it does not fail the run by itself.
    assert (rows["notes.txt"]["status"], rows["notes.txt"]["error_class"]) == ("skipped", "not_media")
    assert not rows["notes.txt"]["output_uri"]
    for name in ("astro.png", "sub/astro_gps.jpg", "odd.webp"):
        r = rows[name]
        assert r["status"] == "ok" and r["faces"] >= 1
        assert len(r["input_sha256"]) == 64 and len(r["output_sha256"]) == 64 and r["config_hash"]
        assert "centerface" in r["models"]
    files = list((out / "_anon_ray" / "manifest").glob("*.parquet"))
    assert len(files) == 1 and b"SecretCam" not in files[0].read_bytes()


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    src = tmp_path_factory.mktemp("vin")
    out = tmp_path_factory.mktemp("vout")
    shutil.copy(SAMPLES / "astronaut_pan.mp4", src / "clip.mp4")
    summary = job.run(_cfg(src, out), run_local)
    return src / "clip.mp4", out / "clip.mp4", summary


def _audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]


def test_video_streams_kept(video_run):
    src, dst, summary = video_run
    assert summary.ok == 1 and summary.failed == 0
    a, b = packets.scan_packets(str(src)), packets.scan_packets(str(dst))
    assert len(a) == len(b)
    assert np.array_equal(a.pts - a.pts[0], b.pts - b.pts[0])
    assert _audio_packets(src) == _audio_packets(dst)


def test_audio_dropped_when_asked(video_run, tmp_path):
    """video.audio=drop: the same masked frames, no audio stream (the source has one)."""
    from anon_ray.config import AudioPolicy, VideoConfig

    src, kept, _ = video_run
    cfg = _cfg(src.parent, tmp_path / "out", video=VideoConfig(audio=AudioPolicy.drop))
    summary = job.run(cfg, run_local, out=io.StringIO())
    assert summary.ok == 1 and _audio_packets(src)
    dropped = tmp_path / "out" / src.name
    with av.open(str(dropped)) as c:
        assert not c.streams.audio and len(c.streams.video) == 1
    assert len(packets.scan_packets(str(dropped))) == len(packets.scan_packets(str(kept)))
    assert AppConfig().video.audio == AudioPolicy.keep


def test_video_faces_masked(video_run):
    src, dst, _ = video_run
    detector = rescan_detector()
    idx_src, idx_dst = packets.scan_packets(str(src)), packets.scan_packets(str(dst))
    before = list(decode(str(src), None, idx_src, 0, len(idx_src)))
    after = list(decode(str(dst), None, idx_dst, 0, len(idx_dst)))
    found_before = sum(int(np.any(detector.detect([f]).cls == FACE)) for _, _, f in before[::10])
    found_after = sum(int(np.any(detector.detect([f]).cls == FACE)) for _, _, f in after[::10])
    assert found_before >= 6 and found_after == 0
    corner = (slice(0, 20), slice(0, 20))  # background, never under a mask
    assert psnr(before[40][2][corner], after[40][2][corner]) > 30


def test_cli_dry_run_writes_nothing_and_starts_no_ray(tmp_path):
    """Both happened before: the output's _anon_ray/ folder appeared and Ray started (its session
    folder under RAY_TMPDIR), 16 s for listing one photo."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(SAMPLES / "astronaut.jpg", src / "a.jpg")
    out, ray_tmp = tmp_path / "out", tmp_path / "ray"
    proc = subprocess.run([sys.executable, "-m", "anon_ray", f"input={src}", f"output={out}", "dry_run=true"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAY_TMPDIR": str(ray_tmp)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "would process: a.jpg (image)" in proc.stderr
    assert not out.exists() and not ray_tmp.exists()


def test_the_drivers_side_loads_no_codec_or_model_runtime():
    """The driver of a run over millions of assets holds the skip index and manifest rows only:
    importing the codecs and ONNX Runtime with it once doubled its memory (88 -> 178 MB)."""
    code = "import sys, anon_ray.run.job; print(' '.join({m.split('.')[0] for m in sys.modules}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not {"av", "cv2", "onnxruntime"} & set(proc.stdout.split()), proc.stdout


def test_cli_runs_on_ray_and_reports_failures(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(SAMPLES / "astronaut.jpg", src / "a.jpg")
    (src / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
    out = tmp_path / "out"
    # Two assets would run in process (engine.py): the pool is asked for.
    proc = subprocess.run([sys.executable, "-m", "anon_ray", f"input={src}", f"output={out}", "cluster.workers=1",
                           "cluster.inline=false"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "corrupt.mp4" in proc.stderr
    assert (out / "a.jpg").is_file() and not (out / "corrupt.mp4").exists()
    leftovers = [p for p in out.rglob("*") if "tmp" in p.name or p.name.startswith(".")]
    assert not leftovers


def test_skipped_media_fails_the_run_unless_told_otherwise(tmp_path):
    """A HEIC photo is media the job does not mask: its row says so and the exit status is 1 by
    default (the archive is not all masked); a text sidecar alone never fails a run."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "IMG_0001.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
    (src / "shot_list.txt").write_text("reel 4")
    for strict in (True, False):
        log = io.StringIO()
        summary = job.run(_cfg(src, tmp_path / f"out{strict}", fail_on_unsupported=strict), run_local, out=log)
        assert summary.not_processed == {"unsupported_format": 1, "not_media": 1} and summary.ok == 0
        assert summary.exit_code == (1 if strict else 0)
        assert "NOT PROCESSED IMG_0001.heic: unsupported_format: HEIF/HEIC image" in log.getvalue()
    (src / "IMG_0001.heic").unlink()
    assert job.run(_cfg(src, tmp_path / "out_txt"), run_local, out=io.StringIO()).exit_code == 0
    assert AppConfig().fail_on_unsupported


def test_each_run_saves_its_resolved_config_beside_the_manifest(photo_run, tmp_path):
    """The manifest's rows hold the config's hash; runs/<run_id>.json holds the whole config, and
    hashing it gives the rows' hash back. A URL's user:password never reaches it."""
    import json

    from anon_ray.io import manifest

    _, out, _, _ = photo_run
    rows = manifest_rows(out)
    [path] = (out / "_anon_ray" / "runs").glob("*.json")
    doc = json.loads(path.read_text())
    assert path.stem == doc["run_id"] == rows[0]["run_id"]
    assert manifest.hash_config(doc["config"], doc["models"]) == doc["config_hash"] == rows[0]["config_hash"]
    assert doc["config"]["mask"]["plate_margin"] == AppConfig().mask.plate_margin
    cfg = _cfg(tmp_path, tmp_path / "o")
    cfg = replace(cfg, storage=replace(cfg.storage, endpoint_url="http://ops:hunter22@minio:9000"))
    manifest.write_run_config(cfg, "r1", "h", {})
    saved = (tmp_path / "o" / "_anon_ray" / "runs" / "r1.json").read_text()
    assert "hunter22" not in saved and '"endpoint_url": "http://***@minio:9000"' in saved


def _row(rel: str, version: str, failed: bool = False):
    """A manifest row of config "c1" for asset `rel` at `version`, ok or failed."""
    asset = Asset(uri=f"in/{rel}", relpath=rel, size=1, version=version, kind="image")
    res = AssetResult(asset, f"out/{rel}", failure=Failure("X", "boom") if failed else None)
    return job.record("r1", res, "c1", "{}")


def test_done_index_latest_success_wins_and_sorts_only_what_is_pending(tmp_path, monkeypatch):
    """The skip index keeps each name's latest successful row (a later failure does not undo it,
    a later success replaces it, in the same merge or a later one) and sorts only the rows pending,
    never the whole index: a re-run over a million assets peaks in these merges (scale_figures)."""
    writer = manifest.ManifestWriter(str(tmp_path), "r1", StorageConfig())
    for rel, version, failed in [("a", "v1", False), ("b", "v1", False), ("c", "v1", False),
                                 ("b", "v2", False), ("a", "v9", True), ("d", "v1", False)]:
        writer.add(_row(rel, version, failed))
    writer.close()
    sorts = []
    latest = manifest._latest
    monkeypatch.setattr(manifest, "_latest", lambda k, v: (sorts.append(len(k)), latest(k, v))[1])
    monkeypatch.setattr(manifest.DoneIndex, "MERGE_ROWS", 3)
    done = manifest.DoneIndex.read(str(tmp_path), StorageConfig())
    assert sorts == [5] and len(done) == 4
    assert done.matches("a", "v1", "c1") and not done.matches("a", "v9", "c1")
    assert done.matches("b", "v2", "c1") and not done.matches("b", "v1", "c1")
    assert done.matches("d", "v1", "c1") and not done.matches("d", "v1", "c2") and not done.matches("e", "v1", "c1")
    # A later run's chunk, not folded yet: merged into the index the folded file made.
    later = manifest.ManifestWriter(str(tmp_path), "r2", StorageConfig())
    for rel, version in [("a", "v3"), ("0", "v1"), ("e", "v1"), ("a", "v4")]:
        later.add(_row(rel, version))
    later.flush()
    sorts.clear()
    done = manifest.DoneIndex.read(str(tmp_path), StorageConfig())
    assert sorts == [5, 4] and len(done) == 6 and list(done.keys) == sorted(done.keys)
    assert done.matches("a", "v4", "c1") and not done.matches("a", "v3", "c1") and not done.matches("a", "v1", "c1")
    assert done.matches("0", "v1", "c1") and done.matches("e", "v1", "c1") and done.matches("b", "v2", "c1")
    assert done.matches("c", "v1", "c1") and done.matches("d", "v1", "c1")


def test_a_run_folds_only_its_own_rows_and_the_next_reads_its_saved_index(tmp_path, monkeypatch):
    """No run rewrites the rows of the runs before it (the history grows by a row per listed asset
    per run), and a job's next run reads the skip index the job saved plus the rows of runs after
    it (a re-render saves none, a crashed run leaves chunks), not every row; an unreadable index
    costs a read of every row."""
    out, cfg = str(tmp_path), StorageConfig()
    audit = tmp_path / "_anon_ray"
    first = manifest.ManifestWriter(out, "r1", cfg, done=manifest.DoneIndex.read(out, cfg))
    for rel in ("a", "b"):
        first.add(_row(rel, "v1"))
    first.close()
    folded = (audit / "manifest" / "r1.parquet").stat()
    second = manifest.ManifestWriter(out, "r2", cfg, done=manifest.DoneIndex.read(out, cfg))
    second.add(_row("a", "v2"))
    second.add(_row("c", "v1", failed=True))
    second.close()
    after = (audit / "manifest" / "r1.parquet").stat()
    assert (after.st_ino, after.st_mtime_ns) == (folded.st_ino, folded.st_mtime_ns)
    assert sorted(p.name for p in (audit / "manifest").iterdir()) == ["r1.parquet", "r2.parquet"]
    assert [p.name for p in (audit / "done").iterdir()] == ["r2.npz"]
    rerender = manifest.ManifestWriter(out, "r3", cfg)
    rerender.add(_row("b", "v3"))
    rerender.close()
    crashed = manifest.ManifestWriter(out, "r4", cfg, done=manifest.DoneIndex.read(out, cfg))
    crashed.add(_row("d", "v1"))
    crashed.flush()  # its driver dies here: a chunk, no fold, no index
    read = []
    batches = manifest._batches
    monkeypatch.setattr(manifest, "_batches", lambda uri, *a: (read.append(uri.rsplit("/", 1)[1]), batches(uri, *a))[1])
    done = manifest.DoneIndex.read(out, cfg)
    assert read == ["r3.parquet", "r4-00000.parquet"]
    assert len(done) == 3 and done.matches("a", "v2", "c1") and done.matches("b", "v3", "c1")
    assert done.matches("d", "v1", "c1")
    assert not done.matches("a", "v1", "c1") and not done.matches("b", "v1", "c1") and not done.matches("c", "v1", "c1")
    (audit / "done" / "r2.npz").write_bytes(b"PK not an index")
    read.clear()
    again = manifest.DoneIndex.read(out, cfg)
    assert read == ["manifest.parquet", "r1.parquet", "r2.parquet", "r3.parquet", "r4-00000.parquet"]
    assert again.keys.tolist() == done.keys.tolist() and again.values.tolist() == done.values.tolist()


def test_an_output_of_an_earlier_build_is_read_once_into_the_saved_index(tmp_path, monkeypatch):
    """Outputs written before per-run files hold one folded manifest.parquet: the first run after
    the upgrade reads it into its skip index and saves that; the run after reads the index alone."""
    out, cfg = str(tmp_path), StorageConfig()
    (tmp_path / "_anon_ray").mkdir()
    legacy = [dataclasses.asdict(_row(rel, "v1")) for rel in ("a", "b")]
    pq.write_table(pa.Table.from_pylist(legacy, schema=manifest.SCHEMA), tmp_path / "_anon_ray" / "manifest.parquet")
    upgraded = manifest.ManifestWriter(out, "r1", cfg, done=manifest.DoneIndex.read(out, cfg))
    upgraded.add(_row("c", "v1"))
    upgraded.close()
    read = []
    batches = manifest._batches
    monkeypatch.setattr(manifest, "_batches", lambda uri, *a: (read.append(uri.rsplit("/", 1)[1]), batches(uri, *a))[1])
    done = manifest.DoneIndex.read(out, cfg)
    assert read == [] and len(done) == 3
    assert all(done.matches(rel, "v1", "c1") for rel in ("a", "b", "c"))
