"""anon-ray-report on a hand-built manifest (exact numbers), and the report plus the review notebook
on a real run of the bundled samples."""

from __future__ import annotations

import base64
import dataclasses
import re
import sys
from pathlib import Path

import nbformat
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, SAMPLES
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

from anon_ray.config import AppConfig, AuditConfig
from anon_ray.io import manifest
from anon_ray.io.manifest import SCHEMA, TRACK_SCHEMA, new_run_id
from anon_ray.run import job
from anon_ray.run.local import run_local
from anon_ray.tools import report
from anon_ray.types import AssetRecord

R0, R1 = "20260101T000000Z-aaaaaaaa", "20260102T000000Z-bbbbbbbb"
PNG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)">')


def _row(run_id: str, relpath: str, status: str, **kw) -> dict:
    kind = "image" if relpath.endswith(".jpg") else "video"
    finished = f"{run_id[:4]}-{run_id[4:6]}-{run_id[6:8]}T00:10:00Z"
    return dataclasses.asdict(AssetRecord(run_id=run_id, uri=f"/in/{relpath}", relpath=relpath, kind=kind,
                                          status=status, finished_at=finished, **kw))


MANIFEST = [
    _row(R0, "a.jpg", "ok", faces=2, frames=1, seconds=0.5),
    _row(R0, "v1.mp4", "ok", faces=3, plates=1, frames=300, seconds=30.0),
    _row(R0, "v2.mp4", "failed", error_class="MediaError", error="frame 12 missing from decode", seconds=2.0),
    _row(R1, "a.jpg", "skipped"),
    _row(R1, "v1.mp4", "skipped"),
    _row(R1, "v2.mp4", "ok", frames=600, seconds=20.0),
    _row(R1, "v3.mp4", "failed", error_class="MediaError", error="video ended at frame 3", seconds=1.0),
    _row(R1, "v4.mp4", "failed", error_class="AssetTimeout", error="asset timed out after 3600 s", seconds=3600.0),
    _row(R1, "v5.mp4", "failed", error_class="MediaError", error="decoding failed at frame 0", seconds=0.2),
    # Listed but not processed: a photo format not read (flagged: media left unmasked) and a sidecar (not).
    _row(R1, "IMG_7.heic", "skipped", error_class="unsupported_format", error="HEIF/HEIC image"),
    _row(R1, "notes.txt", "skipped", error_class="not_media", error="content is not a supported image or video"),
]


def _track(run_id: str, relpath: str, track: int, cls: int, frames: list[int], boxes: bool) -> dict:
    row = {"run_id": run_id, "relpath": relpath, "track": track, "cls": cls, "first_frame": frames[0],
           "last_frame": frames[-1], "frames": len(frames)}
    for c in ("frame", "x1", "y1", "x2", "y2"):
        row[c] = None
    if boxes:
        row.update(frame=frames, x1=[10.0] * len(frames), y1=[10.0] * len(frames),
                   x2=[50.0] * len(frames), y2=[60.0] * len(frames))
    return row


def _tracks(boxes: bool) -> list[dict]:
    return [
        _track(R0, "v1.mp4", 0, 0, list(range(0, 100)), boxes),  # whole: no flag
        _track(R0, "v1.mp4", 1, 0, [*range(100, 125), *range(175, 200)], boxes),  # 50 of 100 frames
        _track(R0, "v1.mp4", 2, 1, [*range(0, 100), *range(120, 300)], boxes),  # 93% but a 20-frame gap
        # v2's current row is R1's (no detections); R0's tracks of it are stale and must be ignored.
        _track(R0, "v2.mp4", 0, 0, [0, 99], boxes),
    ]


def _write(output: Path, manifest: list[dict], tracks: list[dict]) -> Path:
    folder = output / "_anon_ray"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(manifest, schema=SCHEMA), folder / "manifest.parquet")
    pq.write_table(pa.Table.from_pylist(tracks, schema=TRACK_SCHEMA), folder / "tracks.parquet")
    return output


def _report(capsys, *args: str) -> str:
    assert report.main(list(args)) == 0
    return capsys.readouterr().out


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return _write(tmp_path / "out", MANIFEST, _tracks(boxes=True))


def test_summary_numbers(archive: Path, capsys) -> None:
    text = _report(capsys, f"output={archive}")
    runs = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip().startswith("2026")}
    # ok failed skipped faces plates frames seconds frames/s
    assert runs[R0] == ["2", "1", "0", "5", "1", "301", "30.5", "9.87"]
    assert runs[R1] == ["1", "3", "4", "0", "0", "600", "20.0", "30.00"]
    assert "assets by latest status: ok 1, failed 3, skipped 4" in text
    # Current outputs: a.jpg and v1.mp4 from R0 (skipped since), v2.mp4 from R1.
    assert "masked in current outputs: 5 faces, 1 plates in 901 frames" in text
    assert "throughput: 901 frames in 50.5 asset-seconds = 17.84 frames/s" in text
    slowest = text.split("slowest assets (top 10):\n")[1].split("\n\n")[0].splitlines()[1:]
    assert [line.split()[-1] for line in slowest] == ["v4.mp4", "v1.mp4", "v2.mp4", "v3.mp4", "a.jpg", "v5.mp4"]
    assert slowest[1].split()[:3] == ["30.0", "300", "10.00"]
    assert "  MediaError: 2 (e.g. v3.mp4: video ended at frame 3)" in text
    assert "  AssetTimeout: 1 (e.g. v4.mp4: asset timed out after 3600 s)" in text
    assert "frame 12 missing" not in text  # v2's R0 failure is superseded by its R1 success


def test_leak_flags_with_boxes(archive: Path, capsys) -> None:
    flags = _report(capsys, f"output={archive}").split("leak-risk flags:\n")[1].split("\n\n")[0].splitlines()
    assert flags == [
        "  v3.mp4: failed (MediaError): no output",
        "  v4.mp4: failed (AssetTimeout): no output",
        "  v5.mp4: failed (MediaError): no output",
        "  IMG_7.heic: not masked (unsupported_format: HEIF/HEIC image)",
        "  v2.mp4: no face or plate found in 600 frames",
        "  v1.mp4: track 1 (face) frames 100-199: masked on 50 of 100 (50%), longest gap 50 frames",
        "  v1.mp4: track 2 (plate) frames 0-299: masked on 280 of 300 (93%), longest gap 20 frames",
    ]


def test_leak_flags_without_boxes(tmp_path: Path, capsys) -> None:
    # Without box lists only coverage is known: the 93% plate track with its gap goes unnoticed.
    output = _write(tmp_path / "out", MANIFEST, _tracks(boxes=False))
    flags = _report(capsys, f"output={output}").split("leak-risk flags:\n")[1].split("\n\n")[0].splitlines()
    assert [f for f in flags if "track" in f] == ["  v1.mp4: track 1 (face) frames 100-199: masked on 50 of 100 (50%)"]


def test_html_has_inline_plots(archive: Path, tmp_path: Path, capsys) -> None:
    page_path = tmp_path / "sub" / "report.html"
    _report(capsys, f"--output={archive}", f"html={page_path}")
    page = page_path.read_text()
    images = PNG.findall(page)
    assert len(images) == 2  # throughput, and v1.mp4's detections (v2.mp4 has no current tracks)
    assert all(base64.b64decode(img).startswith(b"\x89PNG\r\n\x1a\n") for img in images)
    assert "Detections over time (1 of 1 videos)" in page
    assert "longest gap 20 frames" in page
    assert "src=\"http" not in page and "<script" not in page  # self-contained


def test_no_manifest(tmp_path: Path, capsys) -> None:
    assert report.main([f"output={tmp_path}"]) == 1
    assert "no manifest rows" in capsys.readouterr().err


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory) -> Path:
    """The bundled samples (a photo and a 3 s video) through the real job, boxes kept in the audit."""
    output = tmp_path_factory.mktemp("run") / "out"
    cfg = dataclasses.replace(AppConfig(input=str(SAMPLES), output=str(output)), audit=AuditConfig(boxes=True))
    summary = job.run(cfg, run_local)
    assert (summary.ok, summary.failed) == (2, 0)
    return output


@pytest.mark.slow
def test_report_on_real_run(sample_run: Path, tmp_path: Path, capsys) -> None:
    text = _report(capsys, f"output={sample_run}", f"html={tmp_path / 'r.html'}")
    assert "assets by latest status: ok 2, failed 0, skipped 0" in text
    assert re.search(r"masked in current outputs: [1-9]\d* faces, \d+ plates in 76 frames", text)
    assert len(PNG.findall((tmp_path / "r.html").read_text())) == 2


@pytest.fixture
def venv_kernel(tmp_path: Path, monkeypatch) -> str:
    """A `python3` kernelspec running this interpreter, ahead of any other on the Jupyter path."""
    from ipykernel.kernelspec import install

    install(kernel_name="python3", prefix=str(tmp_path))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] == sys.executable, spec.argv
    return "python3"


@pytest.mark.slow
def test_review_notebook_runs_headless(sample_run: Path, venv_kernel: str, monkeypatch) -> None:
    monkeypatch.setenv("ANON_RAY_OUTPUT", str(sample_run))
    nb = nbformat.read(REPO / "notebooks" / "review.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "commit it stripped"
    NotebookClient(nb, kernel_name=venv_kernel, timeout=300,
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 3  # throughput, the video's detections, the contact sheet
    text = "".join(o.get("text", "") for o in outputs)
    assert re.search(r"[1-9]\d* tracks in 1 videos, 1 photos", text)
    assert str(sample_run) in text  # it read the run named by ANON_RAY_OUTPUT


def test_arguments_in_both_spellings() -> None:
    args = report.parse_args(["output=s3://b/out", "--html", "r.html", "storage.region=eu-west-1"])
    assert (args.output, args.html, args.region, args.endpoint_url) == ("s3://b/out", "r.html", "eu-west-1", "")


def test_run_ids_sort_in_start_order_within_a_second():
    """A re-render started within the second of the job before it must be the asset's latest row
    (report.latest sorts by run id): ids carry microseconds before their random part."""
    ids = [new_run_id() for _ in range(200)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_per_run_files_read_page_by_page_give_the_same_report(archive: Path, tmp_path: Path, capsys, monkeypatch):
    """The report reduces the manifest as it reads it (its memory follows the assets, not the runs
    over them): over per-run files, read a row at a time and reduced after every row, it says the same."""
    whole = _report(capsys, f"output={archive}")
    split = tmp_path / "split"
    for name, schema, rows in (("manifest", SCHEMA, MANIFEST), ("tracks", TRACK_SCHEMA, _tracks(boxes=True))):
        (split / "_anon_ray" / name).mkdir(parents=True)
        for run in (R0, R1):
            pq.write_table(pa.Table.from_pylist([r for r in rows if r["run_id"] == run], schema=schema),
                           split / "_anon_ray" / name / f"{run}.parquet")
    monkeypatch.setattr(manifest, "READ_ROWS", 1)
    monkeypatch.setattr(report, "REDUCE_ROWS", 1)
    assert _report(capsys, f"output={split}") == whole.replace(str(archive), str(split))
