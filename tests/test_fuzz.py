"""Bounded fuzzing of the photo reader + scrubber and the planner's packet scan, plus regressions.

The two targets run at once, each in its own process (libFuzzer owns its process and exits it),
for FUZZ_SECONDS with a fixed seed; longer runs: `python -m tests.fuzz_targets --seconds 600`
(`make fuzz`). Every file in tests/corpus_regressions/<target>/ (inputs that once crashed, hung or
stalled a target) is replayed in-process.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time

import fuzz_targets
import pytest
from fuzz_targets import REGRESSIONS, TARGET_FUNCS, TARGETS, metadata_in, regression_files
from PIL import Image

FUZZ_SECONDS = 25
REPLAY_LIMIT_S = 5.0  # a regression input that once stalled a target must now be quick


def _executions(log: str) -> int | None:
    found = re.findall(r"Done (\d+) runs", log)
    return int(found[-1]) if found else None


@pytest.mark.timeout(FUZZ_SECONDS + 60)
def test_fuzz_targets_run_clean(tmp_path, record_property):
    procs = {}
    for target in TARGETS:
        log = open(tmp_path / f"{target}.log", "w")
        cmd = [sys.executable, "-m", "tests.fuzz_targets", "--target", target, "--seconds", str(FUZZ_SECONDS),
               "--seed", "1", "--corpus", str(tmp_path / "corpus"), "--artifacts", str(tmp_path / target)]
        proc = subprocess.Popen(cmd, cwd=REGRESSIONS.parent.parent, stdout=log, stderr=subprocess.STDOUT)
        procs[target] = (proc, log)
    runs = {}
    for target, (proc, log) in procs.items():
        try:
            code = proc.wait(timeout=FUZZ_SECONDS + 45)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "hang"
        log.close()
        text = (tmp_path / f"{target}.log").read_text(errors="replace")
        findings = sorted(p.name for p in (tmp_path / target).glob("*")) if (tmp_path / target).is_dir() else []
        assert code == 0 and not findings, (
            f"{target}: exit {code}, findings {findings} (fix, then copy them into {REGRESSIONS / target}/)\n"
            + text[-4000:])
        runs[target] = _executions(text)
        assert runs[target], f"{target}: no execution count in the log\n{text[-2000:]}"
    engine = "atheris" if fuzz_targets.atheris else "random"
    print(f"\nfuzzing ({engine}, {FUZZ_SECONDS} s per target, seed 1): "
          + ", ".join(f"{t} {n} executions" for t, n in runs.items()))
    record_property("fuzz_executions", runs)


REPLAYS = [(target, path) for target in TARGETS for path in regression_files(target)]


@pytest.mark.parametrize("target,path", REPLAYS, ids=[f"{t}/{p.name}" for t, p in REPLAYS])
def test_regression_inputs_replay(target, path):
    started = time.monotonic()
    TARGET_FUNCS[target](path.read_bytes())
    assert time.monotonic() - started < REPLAY_LIMIT_S


def test_every_target_has_regressions_and_seeds():
    for target in TARGETS:
        assert regression_files(target), f"no regression inputs for {target}"
        seeds = fuzz_targets.SEEDS[target]()
        assert len(seeds) >= 3
        for data in seeds.values():
            TARGET_FUNCS[target](data)


def test_metadata_check_finds_what_it_looks_for():
    """The scrubber check must be able to fail: inputs that do carry metadata are flagged."""
    exif = Image.Exif()
    exif[0x0110] = "Phone"
    img = Image.new("RGB", (8, 8))

    def save(fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        return buf.getvalue()

    assert metadata_in("jpeg", save("JPEG", exif=exif.tobytes())) == {0xE1}
    assert metadata_in("png", save("PNG", exif=exif.tobytes())) == {b"eXIf"}
    assert metadata_in("webp", save("WEBP", exif=exif.tobytes())) == {b"EXIF"}
    assert 34665 in metadata_in("tiff", save("TIFF", exif={0x8769: {0x9003: "2024:01:01 00:00:00"}}))
    assert metadata_in("jpeg", save("JPEG")) == set() and metadata_in("bmp", save("BMP")) == set()
