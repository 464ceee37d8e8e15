"""Issue figure for archive formats: WebM, AVI, MPG, WMV and FLV inputs masked by the `anon-ray`
command (`python -m anon_ray`) at its default config.

    python -m tests.formats_figures CLIP [WORKDIR]

Writes the first 75 frames of CLIP (a real clip with faces) at 960x540 into each container with the
codec its users' files have (VP9 WebM, H.264 with B-frames and MPEG-4 Part 2 in AVI, MPEG-2 in
MPEG-PS, WMV2 in ASF, FLV1), runs `python -m anon_ray input=WORKDIR/in output=WORKDIR/out`, then decodes
every output whole: frames and their times against the source's (sorted: FFmpeg shows H.264 with
B-frames in AVI out of order), and CenterFace's faces scoring >= 0.5 on every 5th frame of the
source and of the output. Prints one JSON line per file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np

from anon_ray.config import AppConfig
from anon_ray.detect.faces import FaceDetector
from anon_ray.io import manifest
from anon_ray.models.registry import resolve

FRAMES, SIZE, EVERY = 75, (960, 540), 5
# name: (container, codec, encoder options)
KINDS = {
    "vp9.webm": ("webm", "libvpx-vp9", {}),
    "h264_bframes.avi": ("avi", "libx264", {"bf": "2"}),
    "mpeg4.avi": ("avi", "mpeg4", {}),
    "mpeg2.mpg": ("mpeg", "mpeg2video", {}),
    "wmv2.wmv": ("asf", "wmv2", {}),
    "flv1.flv": ("flv", "flv", {}),
}
BITRATE_CODECS = {"mpeg4", "mpeg2video", "wmv2", "flv"}  # their default rate is far too low for 540p


def write_inputs(clip: Path, folder: Path) -> None:
    with av.open(str(clip)) as c:
        frames = [f.to_ndarray(format="rgb24", width=SIZE[0], height=SIZE[1])
                  for _, f in zip(range(FRAMES), c.decode(video=0))]
    for name, (fmt, codec, options) in KINDS.items():
        with av.open(str(folder / name), "w", format=fmt) as out:
            s = out.add_stream(codec, rate=25, options=options)
            s.width, s.height, s.pix_fmt = *SIZE, "yuv420p"
            if codec in BITRATE_CODECS:
                s.bit_rate = 4_000_000
            for a in frames:
                out.mux(s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")))
            out.mux(s.encode())


def decoded(path: Path) -> tuple[str, str, list[float], list[np.ndarray]]:
    with av.open(str(path)) as c:
        tb = c.streams.video[0].time_base
        frames = list(c.decode(video=0))
        return (c.format.name, c.streams.video[0].codec_context.name, [float(f.pts * tb) for f in frames],
                [f.to_ndarray(format="bgr24") for f in frames])


def main(clip: Path, work: Path) -> list[dict]:
    shutil.rmtree(work, ignore_errors=True)
    (work / "in").mkdir(parents=True)
    write_inputs(clip, work / "in")
    run = subprocess.run([sys.executable, "-m", "anon_ray", f"input={work / 'in'}", f"output={work / 'out'}"],
                         capture_output=True, text=True)
    cfg = AppConfig(output=str(work / "out"))
    faces = FaceDetector(resolve(cfg.detect.face.model, cfg.models).path, cfg.detect.face, cfg.detect.session)
    rows = {r["relpath"]: r for r in manifest.read_manifest(cfg.output, cfg.storage).to_pylist()}
    results = []
    for name in KINDS:
        row = rows[name]
        _, _, src_times, src = decoded(work / "in" / name)
        container, codec, times, out = decoded(Path(row["output_uri"]))
        src_times = sorted(src_times)
        results.append({
            "input": name, "exit_status": run.returncode, "status": row["status"],
            "output": Path(row["output_uri"]).name, "container": container, "codec": codec,
            "frames": [len(out), len(src)], "in_order": times == sorted(times),
            "times_equal": bool(np.allclose(np.subtract(times, times[0]), np.subtract(src_times, src_times[0]),
                                            atol=1e-3)) if len(times) == len(src_times) else False,
            "changes": json.loads(row["output_changes"] or "[]"),
            "faces_found_every_5th_frame": [sum(int((faces.detect([f]).score >= 0.5).sum()) for f in frames[::EVERY])
                                            for frames in (src, out)],
        })
    return results


if __name__ == "__main__":
    for line in main(Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/formats_figures")):
        print(json.dumps(line))
