"""anon-ray-review: a local page to review masked outputs, correct them and approve them.

It serves, on 127.0.0.1 by default (`review.host`, `review.port`), the review queue of an output
(the manifest's risk scores), frames of the MASKED outputs as JPEG (never the input), the boxes
masked on a frame (from the boxes file the job kept with `review.boxes=true`, corrected by the
overrides so far), and takes a whole overrides document back (checked against the schema before
it is written, core/overrides.py). Approving an asset writes its overrides file (an empty one
when nothing was corrected) and re-renders it at once (run/rerender.py): its new manifest row
carries the overrides' hash, which marks it reviewed. No pixel of the input leaves the process.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from anon_ray.config import AppConfig, ImageConfig, StorageConfig
from anon_ray.core import overrides as ov_
from anon_ray.io import review, storage
from anon_ray.io.manifest import manifest_files
from anon_ray.media import image as image_io
from anon_ray.media import packets, rotation
from anon_ray.media.decode import decode
from anon_ray.media.probe import probe
from anon_ray.run import rerender
from anon_ray.run.render import corrected
from anon_ray.tools.report import SCANNED, scan_manifest
from anon_ray.tools.review_page import PAGE

EMPTY = json.dumps({"version": ov_.VERSION, "add": [], "suppress": []}).encode()
ROWS_TTL_S = 2.0  # the manifest is listed again after this long (a job may be writing rows meanwhile)
QUEUE_PAGE = 200  # outputs the page lists at a time: an archive's queue is paged, never sent whole

# What the page reads of each asset's current row, beside what finds that row.
COLUMNS = [*SCANNED, "kind", "output_uri", "output_sha256", "risk", "risk_reasons", "overrides_sha256"]


class _Opened:
    """One masked video output held open while it is scrubbed: its local copy, packet index and
    probe, and a decoder parked after the last frame read, so stepping forward decodes each frame
    once (decoding every asked frame from its keyframe made scrubbing a long GOP quadratic)."""

    def __init__(self, row: dict, cfg: StorageConfig) -> None:
        self.key = (row["output_uri"], row["output_sha256"])
        self._stack = contextlib.ExitStack()
        self.path = self._stack.enter_context(storage.local_copy(row["output_uri"], cfg))
        self.index = packets.scan_packets(self.path)
        self.info = probe(self.path, self.index)
        self._frames: Iterator[tuple[int, int, np.ndarray]] | None = None
        self._next = 0  # the frame the parked decoder yields next

    def frame(self, i: int) -> np.ndarray:
        """Frame `i` in stored orientation (StopIteration past the end)."""
        keys = np.flatnonzero(self.index.key[: i + 1])
        key = int(keys[-1]) if len(keys) else 0
        if self._frames is None or not key <= self._next <= i:  # seeking is no dearer than going on
            seek = int(self.index.pts[key]) if len(keys) else None
            self._park(decode(self.path, seek, self.index, i, len(self.index)), i)
        for j, _, rgb in self._frames:
            self._next = j + 1
            if j == i:
                return rgb
        self._park(None)
        raise StopIteration(f"no frame {i}")

    def _park(self, frames: Iterator | None, at: int = 0) -> None:
        if self._frames is not None:
            self._frames.close()
        self._frames, self._next = frames, at

    def close(self) -> None:
        self._park(None)
        self._stack.close()


class Review:
    """What the page asks for, answered from the output store (no HTTP here)."""

    def __init__(self, cfg: AppConfig) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()  # one re-render at a time; reads go on meanwhile
        self._video_lock = threading.Lock()  # the open video's decoder serves one request at a time
        self._opened: _Opened | None = None
        self._read: tuple[float, list[str], pa.Table] | None = None  # (when listed, files, rows)

    def _rows(self) -> pa.Table:
        read = self._read
        if read is None or time.monotonic() - read[0] > ROWS_TTL_S:
            # Listed again, but read again only when the files of rows changed: a large archive's
            # manifest takes seconds to read, the listing a request.
            files = manifest_files(self.cfg.output, self.cfg.storage)
            rows = read[2] if read is not None and files == read[1] else self._scan()
            read = self._read = (time.monotonic(), files, rows)
        return read[2]

    def _scan(self) -> pa.Table:
        """Every current output's row, in queue order: riskiest first, then by name.

        Kept as one Arrow table, not a row object each: an archive of a million outputs is ~0.3 GB
        of columns, and would be several GB of Python dicts."""
        now = scan_manifest(self.cfg.output, self.cfg.storage, columns=COLUMNS).now
        ok = now.filter(pc.field("status") == "ok")
        ok = ok.set_column(ok.schema.get_field_index("risk"), "risk", pc.fill_null(ok["risk"], 0.0))
        return ok.take(pc.sort_indices(ok, [("risk", "descending"), ("relpath", "ascending")]))

    def queue(self, offset: int = 0, limit: int = QUEUE_PAGE) -> dict:
        """`limit` current outputs from the `offset`-th in queue order, each `reviewed` once approved
        (an overrides hash), with how many there are and how many are reviewed."""
        rows = self._rows()
        reviewed = pc.sum(pc.greater(pc.binary_length(rows["overrides_sha256"]), 0)).as_py() or 0
        items = [{"relpath": r["relpath"], "kind": r["kind"], "frames": r["frames"], "risk": r["risk"],
                  "reasons": json.loads(r["risk_reasons"] or "{}"), "reviewed": bool(r["overrides_sha256"])}
                 for r in rows.slice(max(offset, 0), max(limit, 0)).to_pylist()]
        return {"total": len(rows), "reviewed": reviewed, "offset": max(offset, 0), "items": items}

    def _row(self, relpath: str) -> dict:
        rows = self._rows()
        at = pc.index(rows["relpath"], relpath).as_py()  # a scan in native code: ~ms at a million
        if at < 0:
            raise KeyError(relpath)
        return rows.slice(at, 1).to_pylist()[0]

    def overrides(self, relpath: str) -> bytes:
        try:
            return storage.read_bytes(review.overrides_uri(self.cfg.output, relpath), self.cfg.storage)
        except FileNotFoundError:
            return EMPTY

    def _video(self, row: dict) -> _Opened:
        """The output of `row`, opened (call with _video_lock held); the one open before is closed."""
        if self._opened is None or self._opened.key != (row["output_uri"], row["output_sha256"]):
            self.close()
            self._opened = _Opened(row, self.cfg.storage)
        return self._opened

    def close(self) -> None:
        if self._opened is not None:
            self._opened.close()
            self._opened = None

    def frame_jpeg(self, relpath: str, i: int) -> bytes:
        """Frame `i` of the masked output, upright."""
        row = self._row(relpath)
        if row["kind"] == "image":
            with storage.local_copy(row["output_uri"], self.cfg.storage) as path:
                rgb = image_io.read_image(path, ImageConfig()).rgb
        else:
            with self._video_lock:
                opened = self._video(row)
                rgb = rotation.to_display(opened.frame(i), opened.info.rotation)
        ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise ValueError("JPEG encoding of a frame failed")
        return jpeg.tobytes()

    def boxes(self, relpath: str, i: int) -> list[dict]:
        """The boxes masked on frame `i` as corrected so far, in shown pixels, with their track
        (-1 untracked) and whether a reviewer added them."""
        row = self._row(relpath)
        stored, _ = review.read_boxes(review.boxes_uri(self.cfg.output, relpath), self.cfg.storage)
        ov = ov_.parse(self.overrides(relpath))
        rot, wh = 0, (0, 0)
        if row["kind"] == "video":
            with self._video_lock:
                info = self._video(row).info
            rot, wh = info.rotation, (info.width, info.height)
        dets = corrected(stored, ov, max(int(row["frames"]), 1), rot, wh).for_frame(i)
        xyxy = rotation.boxes_to_display(dets.xyxy, rot, *wh) if rot else dets.xyxy
        added = dets.track > (stored.track.max() if len(stored) else -1)
        return [{"box": [round(float(v), 1) for v in b], "track": int(t), "added": bool(a), "cls": int(c)}
                for b, t, a, c in zip(xyxy, dets.track, added, dets.cls)]

    def save(self, relpath: str, data: bytes) -> None:
        self._row(relpath)
        ov_.parse(data)  # raises OverridesError: nothing invalid is written
        storage.write_bytes_atomic(review.overrides_uri(self.cfg.output, relpath), data, self.cfg.storage)

    def approve(self, relpath: str) -> dict:
        self._row(relpath)
        uri = review.overrides_uri(self.cfg.output, relpath)
        if not storage.exists(uri, self.cfg.storage):
            storage.write_bytes_atomic(uri, EMPTY, self.cfg.storage)
        with self._lock:
            summary = rerender.rerender(self.cfg, io.StringIO(), only={relpath})
        self._read = None  # its new row is read at once
        if summary.failed:
            return {"status": "failed", "error": summary.failures[0][2]}
        return {"status": "re-rendered" if summary.ok else "unchanged"}


def handler(api: Review) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args) -> None:  # request lines name assets: not for a shared log
            pass

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, value, status: int = HTTPStatus.OK) -> None:
            self._send(status, json.dumps(value).encode(), "application/json")

        def _route(self, method: str) -> None:
            url = urllib.parse.urlsplit(self.path)
            q = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
            path, i = q.get("path", ""), int(q.get("i", "0"))
            try:
                if method == "GET" and url.path == "/":
                    self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
                elif method == "GET" and url.path == "/api/queue":
                    self._json(api.queue(int(q.get("offset", "0")), int(q.get("limit", str(QUEUE_PAGE)))))
                elif method == "GET" and url.path == "/api/frame":
                    self._send(HTTPStatus.OK, api.frame_jpeg(path, i), "image/jpeg")
                elif method == "GET" and url.path == "/api/boxes":
                    self._json(api.boxes(path, i))
                elif method == "GET" and url.path == "/api/overrides":
                    self._send(HTTPStatus.OK, api.overrides(path), "application/json")
                elif method == "POST" and url.path == "/api/overrides":
                    api.save(path, self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                    self._json({"saved": True})
                elif method == "POST" and url.path == "/api/approve":
                    self._json(api.approve(path))
                else:
                    self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)
            except KeyError:
                self._json({"error": "no current output of that name"}, HTTPStatus.NOT_FOUND)
            except FileNotFoundError:
                self._json({"error": "no boxes file: run the job with review.boxes=true"}, HTTPStatus.CONFLICT)
            except (ov_.OverridesError, StopIteration, ValueError) as exc:
                self._json({"error": str(exc)}, HTTPStatus.BAD_REQUEST)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._route("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._route("POST")

    return Handler


class _Server(ThreadingHTTPServer):
    def __init__(self, cfg: AppConfig) -> None:
        self.api = Review(cfg)
        super().__init__((cfg.review.host, cfg.review.port), handler(self.api))

    def server_close(self) -> None:
        super().server_close()
        self.api.close()  # an output copied from object storage is removed


def serve(cfg: AppConfig) -> ThreadingHTTPServer:
    """A server bound to review.host:review.port (port 0: any free one); call serve_forever()."""
    return _Server(cfg)
