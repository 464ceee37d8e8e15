"""Fuzz targets: the photo reader + metadata scrubber, and the video planner's packet scan.

Each target takes bytes and returns normally when the library accepted them or refused them with
MediaError, the one documented failure for bad input (ValueError is reserved for bad config, and
the config here is fixed). Anything else, a broken invariant (metadata left in an output, a plan
that does not tile the frames) included, raises and is a finding.

Engines: atheris (coverage-guided libFuzzer, our own modules instrumented) when installed,
otherwise a seeded random mutator, so the bounded run in `make test` works everywhere.

    python -m tests.fuzz_targets --seconds 600                 # both targets, 600 s each (make fuzz)
    python -m tests.fuzz_targets --target image --seconds 30 --seed 1

A crash or hang is saved under tests/corpus_regressions/<target>/ (atheris: crash-*, timeout-*);
tests/test_fuzz.py replays every file there.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

try:
    import atheris
except ImportError:  # the random engine below still runs
    atheris = None

REGRESSIONS = Path(__file__).resolve().parent / "corpus_regressions"
TARGETS = ("image", "packets")


def _instrumented():
    """Coverage instrumentation for our modules only, when this file is the fuzzing process."""
    if atheris is not None and __name__ == "__main__":
        return atheris.instrument_imports(include=["anon_ray"])
    return contextlib.nullcontext()


if __name__ == "__main__":
    # Millions of rejected inputs would each log a warning; only findings should reach the log.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")

with _instrumented():
    from anon_ray.config import ImageConfig, SegmentConfig
    from anon_ray.core.plan import plan_segments
    from anon_ray.media import MediaError
    from anon_ray.media.image import decode_image, encode_image
    from anon_ray.media.packets import index_packets, scan_packets
    from anon_ray.media.probe import probe

# A small pixel budget keeps every execution fast; the check itself is what gets exercised.
IMAGE_CFG = ImageConfig(max_pixels=1 << 22)
SEGMENT_CFG = SegmentConfig(seconds=0.2, overlap=2)


# ------------------------------------------------------------------------------------ image target


def _jpeg_markers(d: bytes) -> Iterator[int]:
    pos = 2
    while pos + 4 <= len(d) and d[pos] == 0xFF and d[pos + 1] != 0xDA:
        yield d[pos + 1]
        pos += 2 + struct.unpack_from(">H", d, pos + 2)[0]


def _png_chunks(d: bytes) -> Iterator[bytes]:
    pos = 8
    while pos + 8 <= len(d):
        length, kind = struct.unpack_from(">I4s", d, pos)
        yield kind
        pos += 12 + length


def _webp_chunks(d: bytes) -> Iterator[bytes]:
    pos = 12
    while pos + 8 <= len(d):
        kind, length = struct.unpack_from("<4sI", d, pos)
        yield kind
        pos += 8 + length + (length & 1)


def _tiff_tags(d: bytes) -> Iterator[int]:
    order = "<" if d[:2] == b"II" else ">"
    (offset,) = struct.unpack_from(order + "I", d, 4)
    (count,) = struct.unpack_from(order + "H", d, offset)
    for i in range(count):
        yield struct.unpack_from(order + "H", d, offset + 2 + 12 * i)[0]


# What must never reach an output: EXIF/GPS, XMP, IPTC, ICC profiles, comments and text, dates.
_FORBIDDEN = {
    "jpeg": (_jpeg_markers, {0xE1, 0xE2, 0xED, 0xFE}),
    "png": (_png_chunks, {b"eXIf", b"iTXt", b"tEXt", b"zTXt", b"iCCP", b"tIME"}),
    "webp": (_webp_chunks, {b"EXIF", b"XMP ", b"ICCP"}),
    "tiff": (_tiff_tags, {700, 33723, 34377, 34665, 34675, 34853}),
}


def metadata_in(fmt: str, data: bytes) -> set:
    """Metadata markers, chunks or tags present in an encoded image (our encoder's output)."""
    if fmt not in _FORBIDDEN:
        return set()  # BMP has nowhere to put any
    walk, forbidden = _FORBIDDEN[fmt]
    return set(walk(data)) & forbidden


def image_target(data: bytes) -> None:
    try:
        loaded = decode_image(data, IMAGE_CFG)
    except MediaError:
        return
    h, w = loaded.rgb.shape[:2]
    if loaded.rgb.dtype.name != "uint8" or loaded.rgb.shape != (h, w, 3) or h * w > IMAGE_CFG.max_pixels:
        raise AssertionError(f"decode_image returned {loaded.rgb.dtype} {loaded.rgb.shape}")
    try:
        out = encode_image(loaded, IMAGE_CFG)
    except MediaError:
        return  # e.g. a size the output format cannot hold (WebP is limited to 16383 px)
    found = metadata_in(loaded.format, out)
    if found:
        raise AssertionError(f"{loaded.format} output carries metadata: {sorted(map(str, found))}")


# ------------------------------------------------------------------------------------ packets target


class _Scratch:
    """One reusable file per process: the demuxer reads paths, the fuzzer hands over bytes."""

    path = ""
    # The run's own folder (main sets the corpus folder): libFuzzer ends its process without
    # running exit handlers, so a file in the shared temp folder would outlive every run.
    folder: str | None = None

    @classmethod
    def write(cls, data: bytes) -> str:
        if not cls.path:
            fd, cls.path = tempfile.mkstemp(prefix="anon-ray-fuzz-", suffix=".mp4", dir=cls.folder)
            os.close(fd)
            atexit.register(os.remove, cls.path)  # the random engine does exit normally
        with open(cls.path, "wb") as fh:
            fh.write(data)
        return cls.path


def _check_plan(index, segments) -> None:
    """The plan tiles [0, n) exactly, and each segment can start decoding where it says."""
    n = len(index)
    if [s.start for s in segments] != [0, *[s.end for s in segments[:-1]]] or segments[-1].end != n:
        raise AssertionError(f"segments do not tile 0..{n}: {[(s.start, s.end) for s in segments]}")
    for s in segments:
        if not (0 <= s.seek_frame <= s.ctx_start <= s.start < s.end <= s.ctx_end <= n):
            raise AssertionError(f"segment {s.index} has inconsistent bounds: {s}")
        if s.seek_pts != int(index.pts[s.seek_frame]) or (s.seek_frame and not index.key[s.seek_frame]):
            raise AssertionError(f"segment {s.index} seeks to a non-keyframe: {s}")


def packets_target(data: bytes) -> None:
    path = _Scratch.write(data)
    try:
        index = index_packets(path)
        info = probe(path, index)
    except MediaError:
        return
    # The sample tables' index must be the packet scan's wherever the scan reads the file (the
    # scan may still refuse a middle the fast path never reads: its segment fails when decoded).
    try:
        scanned = scan_packets(path)
    except MediaError:
        scanned = None
    fields = ("pts", "key", "pos", "size", "last_duration", "time_base_num", "time_base_den")
    if scanned is not None and not all(np.array_equal(getattr(scanned, f), getattr(index, f)) for f in fields):
        raise AssertionError("the index from the sample tables differs from the packet scan")
    segments = plan_segments("fuzz", index, info.fps[0] / info.fps[1], SEGMENT_CFG)
    if not segments:
        raise AssertionError("a video with frames got no segments")
    _check_plan(index, segments)


TARGET_FUNCS: dict[str, Callable[[bytes], None]] = {"image": image_target, "packets": packets_target}


# ------------------------------------------------------------------------------------ seeds


def _image_seeds() -> dict[str, bytes]:
    import io

    import numpy as np
    from PIL import Image

    rgb = np.zeros((12, 16, 3), np.uint8)
    rgb[:6, :8], rgb[6:, 8:] = (255, 0, 0), (0, 0, 255)
    img = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112], exif[0x0110] = 6, "Phone"
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 30.0)}

    def save(im: Image.Image, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        return buf.getvalue()

    return {
        "exif.jpg": save(img, "JPEG", exif=exif.tobytes(), quality=80),
        "cmyk.jpg": save(img.convert("CMYK"), "JPEG"),
        "exif.png": save(img, "PNG", exif=exif.tobytes()),
        "rgba.png": save(img.convert("RGBA"), "PNG"),
        "palette.png": save(img.convert("P"), "PNG"),
        "deep.png": save(Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)), "PNG"),
        "exif.webp": save(img, "WEBP", exif=exif.tobytes(), quality=80),
        "lossless.webp": save(img.convert("RGBA"), "WEBP", lossless=True),
        "img.bmp": save(img, "BMP"),
        "exif.tif": save(img, "TIFF", exif=exif.tobytes()),
    }


def _video_seeds() -> dict[str, bytes]:
    import av
    import numpy as np

    seeds = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, fmt, opts in (("bframes.mp4", "mp4", {"g": "4", "bf": "2"}),
                                ("faststart.mp4", "mp4", {"g": "3"}), ("clip.mkv", "matroska", {"g": "4"})):
            path = os.path.join(folder, name)
            container_options = {"movflags": "+faststart"} if name == "faststart.mp4" else {}
            with av.open(path, "w", format=fmt, container_options=container_options) as out:
                v = out.add_stream("libx264", rate=Fraction(25), options={**opts, "preset": "ultrafast"})
                v.width, v.height, v.pix_fmt = 32, 16, "yuv420p"
                for i in range(10):
                    frame = av.VideoFrame.from_ndarray(np.full((16, 32, 3), i * 20, np.uint8), format="rgb24")
                    frame.pts = i
                    out.mux(v.encode(frame))
                out.mux(v.encode(None))
            seeds[name] = Path(path).read_bytes()
    return seeds


SEEDS: dict[str, Callable[[], dict[str, bytes]]] = {"image": _image_seeds, "packets": _video_seeds}


def write_seeds(target: str, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in SEEDS[target]().items():
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    return paths


def regression_files(target: str) -> list[Path]:
    folder = REGRESSIONS / target
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")) \
        if folder.is_dir() else []


# ------------------------------------------------------------------------------------ engines


def _mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """A few libFuzzer-style byte mutations: flips, overwrites with edge values, cuts, splices."""
    d = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(6)
        at = rng.randrange(len(d) + 1)
        if op == 0 and d:
            d[min(at, len(d) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and len(d) >= 4:
            value = rng.choice([0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, rng.getrandbits(32)])
            struct.pack_into(">I", d, min(at, len(d) - 4), value)
        elif op == 2:
            del d[at:at + rng.randint(1, 64)]
        elif op == 3:
            d[at:at] = rng.randbytes(rng.randint(1, 16))
        elif op == 4:
            d = d[:at]
        else:
            other = rng.choice(pool)
            start = rng.randrange(len(other) + 1)
            d[at:at] = other[start:start + rng.randint(1, 256)]
    return bytes(d)


def run_random(target: str, seconds: float, seed: int, artifacts: Path) -> int:
    """Seeded mutation of the seeds for `seconds`; returns executions. Raises on a finding."""
    func = TARGET_FUNCS[target]
    rng = random.Random(seed)
    pool = list(SEEDS[target]().values())
    deadline, runs = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        data = _mutate(rng, rng.choice(pool), pool)
        try:
            func(data)
        except Exception:
            artifacts.mkdir(parents=True, exist_ok=True)
            (artifacts / f"crash-random-{seed}-{runs}").write_bytes(data)
            raise
        runs += 1
    return runs


def run_atheris(target: str, seconds: int, seed: int, artifacts: Path, corpus: Path) -> None:
    """libFuzzer loop in this process; it exits the process when time is up or on a finding.

    `corpus` keeps what coverage guidance found, so a later run resumes from it.
    """
    work = corpus / target
    seeds = work / "seeds"
    write_seeds(target, seeds)
    found = work / "found"
    found.mkdir(exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    args = [sys.argv[0], f"-max_total_time={seconds}", f"-seed={seed}", "-timeout=10", "-rss_limit_mb=3072",
            "-max_len=16384", "-print_final_stats=1", f"-artifact_prefix={artifacts}/", str(found), str(seeds)]
    atheris.Setup(args, TARGET_FUNCS[target])
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=(*TARGETS, "all"), default="all")
    parser.add_argument("--seconds", type=int, default=60, help="per target")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--engine", choices=("atheris", "random"), default="atheris" if atheris else "random")
    parser.add_argument("--corpus", type=Path, default=Path(tempfile.gettempdir()) / "anon-ray-fuzz",
                        help="atheris working corpus, one folder per target (kept between runs)")
    parser.add_argument("--artifacts", type=Path, help="where findings go (default: tests/corpus_regressions/<target>)")
    args = parser.parse_args(argv)
    if args.target == "all":
        # One process per target: libFuzzer runs once per process and exits at the end.
        procs = [subprocess.Popen([sys.executable, "-m", "tests.fuzz_targets", *(argv or sys.argv[1:]),
                                   "--target", target], cwd=REGRESSIONS.parent.parent) for target in TARGETS]
        return max(p.wait() for p in procs)
    artifacts = args.artifacts or REGRESSIONS / args.target
    args.corpus.mkdir(parents=True, exist_ok=True)
    _Scratch.folder = str(args.corpus)
    if args.engine == "atheris":
        if atheris is None:
            parser.error("atheris is not installed (pip install -e '.[dev]')")
        run_atheris(args.target, args.seconds, args.seed, artifacts, args.corpus)
    runs = run_random(args.target, args.seconds, args.seed, artifacts)
    print(f"{args.target}: Done {runs} runs in {args.seconds} second(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
