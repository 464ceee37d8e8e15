"""anon-ray-report: summarize a job's audit manifest as text, and optionally as a self-contained HTML page.

Everything shown comes from the manifest and tracks tables (counts, timings, error classes, track
spans, boxes only when audit.boxes was on), so the report cannot carry crops, plate text or
credentials (I5). Aggregates run in Arrow: the manifest has one row per asset per run, and nightly
runs over large archives make that millions of rows. Outputs on S3 are read through io/storage.py
with the job's storage.* options; credentials come from the standard AWS chain, never from options.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from anon_ray.config import StorageConfig, TrackConfig
from anon_ray.io.manifest import SCHEMA, manifest_pages, read_tracks
from anon_ray.types import CLASS_NAMES

if TYPE_CHECKING:  # matplotlib is needed only for figures (the HTML report and the notebook)
    from matplotlib.figure import Figure

STATUSES = ("ok", "failed", "skipped")
TOP = 10
# A track masked on fewer of its own frames than this has holes a viewer may see through.
MIN_COVERAGE = 0.8
# The tracker interpolates gaps up to max_gap frames; a longer gap is frames left unmasked.
MAX_GAP = TrackConfig().max_gap
# About 10 s at 25 fps: a video this long in which nothing at all was found deserves a look.
MANY_FRAMES = 250
# Bounds on what is listed or plotted, so the report of a large archive stays readable.
MAX_LISTED = 50
MAX_PLOTTED = 20
SUMMED = ("faces", "plates", "frames", "seconds")
# The manifest columns `scan` reduces on, then those the report shows; the others (hashes, input
# URIs, model lists, stage seconds) are not read: they are most of a row's weight.
SCANNED = ["run_id", "relpath", "status", "error_class", "finished_at", *SUMMED]
COLUMNS = [*SCANNED, "kind", "error", "output_uri", "risk", "risk_reasons", "review_frames"]
# Rows taken in before those pending are reduced to one per asset: memory follows the assets, not
# the runs over them (a month of nightly runs over a million assets is 30 million rows).
REDUCE_ROWS = 262_144


@dataclass(frozen=True)
class RunRow:
    run_id: str
    counts: dict[str, int]  # status -> assets
    faces: int
    plates: int
    frames: int
    seconds: float


@dataclass(frozen=True)
class Flag:
    relpath: str
    reason: str


@dataclass(frozen=True)
class Report:
    output: str
    runs: list[RunRow]
    status: dict[str, int]  # of each asset's latest row
    faces: int  # the rest describes the outputs as they are now: each asset's latest processed row
    plates: int
    frames: int
    seconds: float
    slowest: list[dict]
    failures: list[tuple[str, int, str, str]]  # error class, assets, example relpath, example message
    flags: list[Flag]
    queue: list[dict]  # review queue: current outputs with a risk, riskiest first (core/risk.py)


@dataclass(frozen=True)
class Scan:
    """The manifest as the report needs it, reduced while it is read."""

    runs: list[RunRow]
    status: dict[str, int]  # of each asset's latest row
    now: pa.Table  # each asset's latest processed row (`_processed`): its output as it is now


def fps(frames: int, seconds: float) -> float:
    return frames / seconds if seconds > 0 else 0.0


def latest(table: pa.Table) -> pa.Table:
    """Each relpath's last row. Run ids start with a UTC timestamp, so they sort in time order."""
    if not table.num_rows:
        return table
    # Sorted indices, then the rows kept taken once: sorting the table would copy every column of
    # every row first (the reduction of a large manifest runs this on millions of rows).
    order = pc.sort_indices(table, [("relpath", "ascending"), ("run_id", "ascending"), ("finished_at", "ascending")])
    rel = table.column("relpath").take(order)
    last = pa.concat_arrays([pc.not_equal(rel.slice(1), rel.slice(0, len(rel) - 1)).combine_chunks(), pa.array([True])])
    return table.take(order.filter(last))


def _processed(manifest: pa.Table) -> pa.Table:
    """The rows that made (or, failed, removed) an output, or said why an asset was not processed
    (a skipped row with its reason as error class); a skipped row without a reason only confirms
    an earlier result and carries no counts."""
    return manifest.filter((pc.field("status") != "skipped") | (pc.field("error_class") != ""))


def _status_counts(table: pa.Table) -> dict[str, int]:
    grouped = table.group_by("status").aggregate([("relpath", "count")]).to_pylist()
    counts = dict.fromkeys(STATUSES, 0)
    counts.update({row["status"]: row["relpath_count"] for row in grouped})
    return counts


def _sum(table: pa.Table, column: str) -> int | float:
    return pc.sum(table.column(column)).as_py() or 0


def scan(pages: Iterable[pa.Table], schema: pa.Schema) -> Scan:
    """Per-run counts and sums, each asset's latest row's status and its latest processed row,
    from manifest pages of `schema` read oldest run first."""
    counts: dict[str, dict[str, int]] = {}
    sums: dict[str, dict[str, float]] = {}
    last: list[pa.Table] = []  # reduced: at most one row per asset, then the pages since
    now: list[pa.Table] = []
    rows = 0
    for page in pages:
        _add_run_figures(page, counts, sums)
        last.append(page.select(["relpath", "run_id", "finished_at", "status"]))
        now.append(_processed(page))
        rows += page.num_rows
        if rows >= REDUCE_ROWS:
            last, now, rows = [latest(pa.concat_tables(last))], [latest(pa.concat_tables(now))], 0
            pa.default_memory_pool().release_unused()  # the pages and sorts just freed
    runs = [RunRow(run, counts[run], *(sums.get(run, {}).get(c, 0) for c in SUMMED)) for run in sorted(counts)]
    status = _status_counts(latest(pa.concat_tables(last))) if last else dict.fromkeys(STATUSES, 0)
    return Scan(runs, status, latest(pa.concat_tables(now)) if now else schema.empty_table())


def scan_manifest(output: str, storage: StorageConfig, columns: list[str] = COLUMNS) -> Scan:
    """`scan` of an output's manifest, these columns of it."""
    return scan(manifest_pages(output, storage, columns), pa.schema([SCHEMA.field(c) for c in columns]))


def _add_run_figures(page: pa.Table, counts: dict[str, dict[str, int]], sums: dict[str, dict[str, float]]) -> None:
    # One thread: Acero's pool threads each keep a heap of their own, for pages of a few thousand rows.
    for row in page.group_by(["run_id", "status"], use_threads=False).aggregate([("relpath", "count")]).to_pylist():
        run = counts.setdefault(row["run_id"], dict.fromkeys(STATUSES, 0))
        run[row["status"]] = run.get(row["status"], 0) + row["relpath_count"]
    ok = page.filter(pc.field("status") == "ok")
    for row in ok.group_by("run_id", use_threads=False).aggregate([(c, "sum") for c in SUMMED]).to_pylist():
        run = sums.setdefault(row["run_id"], dict.fromkeys(SUMMED, 0))
        for c in SUMMED:
            run[c] += row[f"{c}_sum"] or 0


def failures(now: pa.Table) -> list[tuple[str, int, str, str]]:
    failed = now.filter(pc.field("status") == "failed").sort_by("relpath")
    # Single-threaded grouping keeps "first" the first in relpath order: a stable example per class.
    grouped = failed.group_by("error_class", use_threads=False).aggregate(
        [("relpath", "count"), ("relpath", "first"), ("error", "first")]).to_pylist()
    grouped.sort(key=lambda r: (-r["relpath_count"], r["error_class"]))
    return [(r["error_class"], r["relpath_count"], r["relpath_first"], r["error_first"]) for r in grouped]


def current_tracks(now: pa.Table, tracks: pa.Table) -> pa.Table:
    """The tracks of the outputs as they are now (older runs' tracks of the same asset are stale)."""
    ok = now.select(["run_id", "relpath"]).filter(pc.equal(now.column("status"), "ok"))
    return tracks.filter(pc.is_in(_run_asset(tracks), value_set=_run_asset(ok)))


def read_current_tracks(output: str, storage: StorageConfig, now: pa.Table) -> pa.Table:
    """`current_tracks` of an output, filtered page by page as they are read."""
    return read_tracks(output, storage, where=lambda page: current_tracks(now, page))


def _run_asset(table: pa.Table) -> pa.ChunkedArray:
    return pc.binary_join_element_wise(table.column("run_id"), table.column("relpath"), "\x00")


def longest_gaps(tracks: pa.Table) -> np.ndarray | None:
    """Per track, the most consecutive frames inside its span without a box; None without box lists."""
    frames = tracks.column("frame").combine_chunks()
    if not tracks.num_rows or frames.null_count == tracks.num_rows:
        return None
    flat = pc.list_flatten(frames).to_numpy()
    parent = pc.list_parent_indices(frames).to_numpy()
    gaps = np.zeros(tracks.num_rows, np.int64)
    same = parent[1:] == parent[:-1]
    np.maximum.at(gaps, parent[1:][same], np.diff(flat)[same] - 1)
    return gaps


def track_flags(tracks: pa.Table) -> list[Flag]:
    first, last, n = (tracks.column(c).to_numpy() for c in ("first_frame", "last_frame", "frames"))
    coverage = n / np.maximum(last - first + 1, 1)
    gaps = longest_gaps(tracks)
    risky = (coverage < MIN_COVERAGE) | (gaps > MAX_GAP if gaps is not None else False)
    rel, ids, cls = (tracks.column(c).to_pylist() for c in ("relpath", "track", "cls"))
    flags = []
    for i in np.flatnonzero(risky):
        reason = (f"track {ids[i]} ({CLASS_NAMES[cls[i]]}) frames {first[i]}-{last[i]}: masked on "
                  f"{n[i]} of {last[i] - first[i] + 1} ({coverage[i]:.0%})")
        flags.append(Flag(rel[i], reason + (f", longest gap {gaps[i]} frames" if gaps is not None else "")))
    return flags


def asset_flags(now: pa.Table) -> list[Flag]:
    flags = [Flag(r["relpath"], f"failed ({r['error_class']}): no output")
             for r in now.filter(pc.field("status") == "failed").select(["relpath", "error_class"]).to_pylist()]
    left = now.filter((pc.field("status") == "skipped") & (pc.field("error_class") != "not_media"))
    flags += [Flag(r["relpath"], f"not masked ({r['error_class']}: {r['error']})")
              for r in left.select(["relpath", "error_class", "error"]).to_pylist()]
    blind = now.filter((pc.field("status") == "ok") & (pc.field("kind") == "video")
                       & (pc.field("faces") + pc.field("plates") == 0) & (pc.field("frames") >= MANY_FRAMES))
    flags += [Flag(r["relpath"], f"no face or plate found in {r['frames']} frames")
              for r in blind.select(["relpath", "frames"]).to_pylist()]
    return flags


def review_queue(now: pa.Table) -> list[dict]:
    """Current outputs the risk signals flagged, riskiest first (ties: by name), as manifest rows."""
    shown = now.select(["relpath", "kind", "output_uri", "risk", "risk_reasons", "review_frames"])
    flagged = shown.filter(pc.and_(pc.equal(now.column("status"), "ok"), pc.greater(now.column("risk"), 0)))
    return flagged.sort_by([("risk", "descending"), ("relpath", "ascending")]).to_pylist()


def summarize(output: str, scanned: Scan, tracks: pa.Table) -> Report:
    now = scanned.now
    # Only the columns each figure needs are filtered or taken: `now` holds a row per asset.
    ok = now.select(list(SUMMED)).filter(pc.equal(now.column("status"), "ok"))
    shown = ["relpath", "kind", "status", "frames", "seconds"]
    worked = now.select(shown).filter(pc.not_equal(now.column("status"), "skipped"))
    top = pc.select_k_unstable(worked, TOP, [("seconds", "descending"), ("relpath", "ascending")])
    slowest = worked.take(top).sort_by([("seconds", "descending"), ("relpath", "ascending")])
    return Report(
        output=output, runs=scanned.runs, status=scanned.status,
        faces=_sum(ok, "faces"), plates=_sum(ok, "plates"), frames=_sum(ok, "frames"), seconds=_sum(ok, "seconds"),
        slowest=slowest.to_pylist(),
        failures=failures(now),
        flags=asset_flags(now) + track_flags(current_tracks(now, tracks)),
        queue=review_queue(now),
    )


def _listed(lines: list[str], total: int) -> list[str]:
    return lines[:MAX_LISTED] + ([f"  ... and {total - MAX_LISTED} more"] if total > MAX_LISTED else [])


def format_text(r: Report) -> str:
    out = [f"anon-ray-report: {r.output} ({len(r.runs)} runs)", "",
           "runs:", f"  {'run_id':<26} {'ok':>7} {'failed':>7} {'skipped':>7} {'faces':>7} {'plates':>7}"
           f" {'frames':>9} {'seconds':>9} {'frames/s':>9}"]
    for run in r.runs:
        c = run.counts
        out.append(f"  {run.run_id:<26} {c['ok']:>7} {c['failed']:>7} {c['skipped']:>7} {run.faces:>7} {run.plates:>7}"
                   f" {run.frames:>9} {run.seconds:>9.1f} {fps(run.frames, run.seconds):>9.2f}")
    out += ["", "assets by latest status: " + ", ".join(f"{s} {r.status[s]}" for s in STATUSES),
            f"masked in current outputs: {r.faces} faces, {r.plates} plates in {r.frames} frames",
            f"throughput: {r.frames} frames in {r.seconds:.1f} asset-seconds = {fps(r.frames, r.seconds):.2f} frames/s",
            "", f"slowest assets (top {TOP}):", f"  {'seconds':>9} {'frames':>9} {'frames/s':>9}  status  relpath"]
    out += [f"  {a['seconds']:>9.1f} {a['frames']:>9} {fps(a['frames'], a['seconds']):>9.2f}"
            f"  {a['status']:<6}  {a['relpath']}" for a in r.slowest]
    out += ["", "failures by error class:"] + ([f"  {cls}: {n} (e.g. {rel}: {msg})" for cls, n, rel, msg in r.failures]
                                               or ["  none"])
    out += ["", "leak-risk flags:"] + (_listed([f"  {f.relpath}: {f.reason}" for f in r.flags], len(r.flags))
                                       or ["  none"])
    out += ["", "review queue (riskiest first: risk, signals, asset):"] + (
        _listed([f"  {q['risk']:>9.1f}  {_reasons(q)}  {q['relpath']}" for q in r.queue], len(r.queue)) or ["  none"])
    return "\n".join(out)


def _reasons(q: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in json.loads(q["risk_reasons"] or "{}").items())


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}">'


def activity(tracks: pa.Table) -> tuple[np.ndarray, np.ndarray | None]:
    """Tracks alive per frame per class (first..last frame), and with box lists tracks masked per frame.

    Returns (active (classes, frames), masked (frames,) or None).
    """
    first, last, cls = (tracks.column(c).to_numpy() for c in ("first_frame", "last_frame", "cls"))
    length = int(last.max()) + 2
    delta = np.zeros((len(CLASS_NAMES), length), np.int64)
    np.add.at(delta, (cls, first), 1)
    np.add.at(delta, (cls, last + 1), -1)
    active = np.cumsum(delta, axis=1)[:, :-1]
    boxed = tracks.column("frame").combine_chunks()
    if boxed.null_count == tracks.num_rows:
        return active, None
    return active, np.bincount(pc.list_flatten(boxed).to_numpy(), minlength=length - 1)[: length - 1]


def activity_figure(relpath: str, tracks: pa.Table) -> Figure:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    active, masked = activity(tracks)
    fig = Figure(figsize=(9, 2.4))
    ax = fig.subplots()
    x = np.arange(active.shape[1])
    for c, name in enumerate(CLASS_NAMES):
        if active[c].any():
            ax.step(x, active[c], where="post", label=f"{name} tracks")
    alive = active.sum(axis=0)
    if masked is not None:
        ax.step(x, masked, where="post", color="black", linewidth=0.8, label="tracks masked")
    if masked is not None and (alive > masked).any():
        # Frames where a track is alive but has no box: the places a viewer could see through.
        ax.fill_between(x, 0, alive, where=alive > masked, step="post", color="red", alpha=0.3, label="gap in a track")
    ax.set(title=relpath, xlabel="frame", ylabel="tracks")
    ax.set_ylim(bottom=0, top=max(int(alive.max()), 1) + 0.5)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="upper right", fontsize="small")
    return fig


def throughput_figure(now: pa.Table) -> Figure:
    from matplotlib.figure import Figure

    rows = now.filter((pc.field("status") == "ok") & (pc.field("seconds") > 0)).select(
        ["relpath", "frames", "seconds"]).to_pylist()
    rows = sorted(rows, key=lambda r: fps(r["frames"], r["seconds"]))[:MAX_LISTED]
    fig = Figure(figsize=(9, 0.3 * len(rows) + 1.2))
    ax = fig.subplots()
    ax.barh([r["relpath"] for r in rows], [fps(r["frames"], r["seconds"]) for r in rows])
    ax.invert_yaxis()
    ax.set(title=f"throughput per asset (lowest {len(rows)})", xlabel="frames/s")
    return fig


def _cells(tag: str, row: list) -> str:
    return "".join(f"<{tag}>{html.escape(str(v))}</{tag}>" for v in row)


def _table(header: list[str], rows: list[list]) -> str:
    return f"<table><tr>{_cells('th', header)}</tr>" + "".join(f"<tr>{_cells('td', r)}</tr>" for r in rows) + "</table>"


def to_html(r: Report, now: pa.Table, tracks: pa.Table) -> str:
    live = current_tracks(now, tracks)
    # Videos with flags first, then the longest: the ones a reviewer should look at.
    flagged = {f.relpath for f in r.flags}
    spans = live.group_by("relpath").aggregate([("last_frame", "max")]).to_pylist()
    videos = sorted(spans, key=lambda s: (s["relpath"] not in flagged, -s["last_frame_max"], s["relpath"]))
    plots = [_png(activity_figure(v["relpath"], live.filter(pc.field("relpath") == v["relpath"])))
             for v in videos[:MAX_PLOTTED]]
    rows = [[f.relpath, f.reason] for f in r.flags[:MAX_LISTED]]
    flags = _table(["asset", "reason"], rows) if rows else "<p>none</p>"
    queued = [[q["relpath"], f"{q['risk']:.1f}", _reasons(q)] for q in r.queue[:MAX_LISTED]]
    queue = _table(["asset", "risk", "signals"], queued) if queued else "<p>none</p>"
    return "\n".join([
        "<!DOCTYPE html>", '<html><head><meta charset="utf-8">',
        f"<title>anon-ray report: {html.escape(r.output)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}pre{background:#f6f6f6;padding:1em}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}table{border-collapse:collapse}</style>",
        "</head><body>", f"<h1>anon-ray report</h1><h2>Summary</h2><pre>{html.escape(format_text(r))}</pre>",
        "<h2>Leak-risk flags</h2>", flags, "<h2>Review queue</h2>", queue,
        "<h2>Throughput per asset</h2>", _png(throughput_figure(now)),
        f"<h2>Detections over time ({len(plots)} of {len(videos)} videos)</h2>", *plots,
        "</body></html>",
    ])


STORAGE_OPTIONS = ("endpoint_url", "region", "addressing_style")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="anon-ray-report", description=__doc__.splitlines()[0],
        epilog="Options may also be written key=value, like anon-ray's: output=PATH html=PATH")
    parser.add_argument("--output", required=True,
                        help="the job's output root (a folder or s3:// URI holding _anon_ray/)")
    parser.add_argument("--html", help="also write the report, with plots, as one self-contained local HTML file")
    parser.add_argument("--sheets", type=int, default=0,
                        help="write contact sheets of the masked outputs of the first N queued assets to "
                             "_anon_ray/review/sheets/")
    for name in STORAGE_OPTIONS:
        # Credentials are never options: boto3 takes them from the standard AWS chain.
        parser.add_argument(f"--storage.{name}", dest=name, default=getattr(StorageConfig(), name),
                            help=f"as the job's storage.{name}, for s3:// outputs")
    options = {"output", "html", "sheets", *(f"storage.{name}" for name in STORAGE_OPTIONS)}
    # anon-ray takes Hydra-style key=value overrides; the same spelling works here.
    return parser.parse_args([f"--{a}" if a.split("=", 1)[0] in options else a for a in argv])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    storage = StorageConfig(**{name: getattr(args, name) for name in STORAGE_OPTIONS})
    scanned = scan_manifest(args.output, storage)
    if not scanned.runs:
        print(f"anon-ray-report: no manifest rows under {args.output.rstrip('/')}/_anon_ray", file=sys.stderr)
        return 1
    tracks = read_current_tracks(args.output, storage, scanned.now)
    report = summarize(args.output, scanned, tracks)
    print(format_text(report))
    if args.html:
        page = to_html(report, scanned.now, tracks)
        os.makedirs(os.path.dirname(os.path.abspath(args.html)), exist_ok=True)
        with open(args.html, "w", encoding="utf-8") as fh:
            fh.write(page)
        print(f"html: {args.html}")
    for q in report.queue[:args.sheets]:
        from anon_ray.tools.sheets import write_sheet  # OpenCV and the decoder only when asked

        if uri := write_sheet(args.output, q, storage):
            print(f"sheet: {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
