"""Issue figures for the encoder (issue 24 step 4): what each libx264 preset costs and loses.

    python -m tests.encoder_figures CLIP [--frames 150] [--width 1280]

Decodes the first FRAMES frames of CLIP once (scaled to WIDTH, as the bench does for 720p),
encodes them with each preset at the default CRF through the job's own VideoWriter (the frames
unmasked, so every pixel counts as "unmasked"), and reports per preset: encode seconds and
frames/s, output kB, and PSNR/SSIM of the decoded output against the frames given. One JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time

import cv2
import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from anon_ray.config import VideoConfig
from anon_ray.media.decode import decode
from anon_ray.media.encode import VideoWriter
from anon_ray.media.packets import scan_packets
from anon_ray.media.probe import probe

PRESETS = ("medium", "veryfast", "superfast", "ultrafast")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("clip")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--width", type=int, default=1280)
    args = parser.parse_args()
    index = scan_packets(args.clip)
    info = probe(args.clip, index)
    n = min(args.frames, len(index))
    height = round(info.height * args.width / info.width / 2) * 2
    frames = [(pts, cv2.resize(rgb, (args.width, height), interpolation=cv2.INTER_AREA))
              for _, pts, rgb in decode(args.clip, None, index, 0, n)]
    info = dataclasses.replace(info, width=args.width, height=height)
    figures = {"clip": os.path.basename(args.clip), "frames": n, "size": f"{args.width}x{height}",
               "crf": VideoConfig().crf, "presets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in PRESETS:
            path = os.path.join(tmp, f"{preset}.mp4")
            started = time.perf_counter()
            with VideoWriter(path, info, dataclasses.replace(VideoConfig(), preset=preset)) as writer:
                for pts, rgb in frames:
                    writer.write(rgb, pts)
            seconds = time.perf_counter() - started
            out_index = scan_packets(path)
            decoded = [rgb for _, _, rgb in decode(path, None, out_index, 0, len(out_index))]
            psnr = np.mean([peak_signal_noise_ratio(a, b) for (_, a), b in zip(frames, decoded)])
            ssim = np.mean([structural_similarity(a, b, channel_axis=2) for (_, a), b in list(zip(frames, decoded))[::10]])
            figures["presets"][preset] = {"encode_s": round(seconds, 2), "fps": round(n / seconds, 1),
                                          "kB": os.path.getsize(path) // 1000, "psnr": round(float(psnr), 2),
                                          "ssim": round(float(ssim), 4)}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
