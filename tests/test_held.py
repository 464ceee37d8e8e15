"""Owned frames decoded once and held for the encoder (run/held.py), on a real clip."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES

from anon_ray.config import AppConfig, DetectConfig, PlateConfig
from anon_ray.media.encode import VideoWriter
from anon_ray.run import held as held_frames
from anon_ray.run import lifecycle, pipeline
from anon_ray.run.errors import AssetError
from anon_ray.types import Asset, Failure, SegmentResult

CLIP = SAMPLES / "astronaut_pan.mp4"


def test_a_full_buffer_waits_for_the_encoder_and_close_releases_it():
    held = held_frames.HeldFrames(2)
    frame = np.zeros((2, 2, 3), np.uint8)
    held.put(0, 0, frame)
    held.put(1, 1, frame)
    third = threading.Thread(target=held.put, args=(2, 2, frame))
    third.start()
    third.join(0.2)
    assert third.is_alive()  # waits for room
    assert held.take(0)[0] == 0
    third.join(5)
    assert not third.is_alive()
    with pytest.raises(AssetError, match="frame 0 is final but was never held"):
        held.take(0)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(held.put, 3, 3, frame)  # 1 and 2 held: full again
        with pytest.raises(TimeoutError):
            waiting.result(0.2)
        held.close()
        with pytest.raises(held_frames.Closed):
            waiting.result(5)


def test_only_4k_and_up_is_decoded_again():
    cap = held_frames.capacity(16, 4)
    assert held_frames.fits(cap, 1920, 1080) and not held_frames.fits(cap, 3840, 2160)


def one_segment(tmp_path: Path, name: str) -> tuple[SegmentResult | Failure, Path]:
    cfg = AppConfig(output=str(tmp_path), detect=DetectConfig(plate=PlateConfig(enabled=False)))
    cfg = replace(cfg, segment=replace(cfg.segment, seconds=1.0))
    vplan = lifecycle.plan_video(str(CLIP), CLIP.name, cfg)
    part = tmp_path / name / "part-00001.mp4"
    result = lifecycle.segment(pipeline.Worker(cfg), Asset(str(CLIP), CLIP.name, CLIP.stat().st_size, "v", "video"),
                               vplan.segments[1], vplan, str(part))
    return result, part


@pytest.fixture
def decode_calls(monkeypatch) -> list[tuple[int, int]]:
    calls = []
    real = pipeline.decode

    def counted(src, seek_pts, index, first, stop):
        calls.append((first, stop))
        return real(src, seek_pts, index, first, stop)

    monkeypatch.setattr(pipeline, "decode", counted)
    return calls


def test_held_frames_encode_the_same_part_with_one_decode(tmp_path, decode_calls, monkeypatch):
    held, held_part = one_segment(tmp_path, "held")
    assert isinstance(held, SegmentResult), held
    assert len(decode_calls) == 1  # the context range only
    monkeypatch.setattr(held_frames, "HELD_BYTES", 0)  # as for 4K: decoded again
    again, again_part = one_segment(tmp_path, "again")
    assert isinstance(again, SegmentResult), again
    assert sorted(decode_calls[1:]) == sorted([decode_calls[0], (held.plan.start, held.plan.end)])
    assert held_part.read_bytes() == again_part.read_bytes()
    assert held.frames_written == again.frames_written == held.plan.end - held.plan.start


def test_an_encoder_failure_releases_the_decoder_waiting_for_room(tmp_path, monkeypatch):
    """The encoder fails at its first frame while detection and decoding run on and fill the
    buffer: the segment fails with the encoder's error instead of hanging on a full buffer."""
    monkeypatch.setattr(held_frames, "SLACK", 0)
    real_write = VideoWriter.write

    def failing(self, rgb, pts):
        threading.Event().wait(1.0)  # let the decoder fill the buffer and wait for room
        raise OSError("injected encoder failure")

    monkeypatch.setattr(VideoWriter, "write", failing)
    out: list = []
    runner = threading.Thread(target=lambda: out.append(one_segment(tmp_path, "fails")), daemon=True)
    runner.start()
    runner.join(60)
    assert not runner.is_alive(), "the segment hangs on a full buffer"
    monkeypatch.setattr(VideoWriter, "write", real_write)
    ((result, part),) = out
    assert isinstance(result, Failure) and "injected encoder failure" in result.error, result
    assert not part.exists()
    assert not [t for t in threading.enumerate() if t.name == "anon-ray-prefetch" and t.is_alive()]
