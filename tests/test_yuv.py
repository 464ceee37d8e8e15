"""YUV <-> RGB on real decoded frames: the OpenCV path agrees with swscale's exact conversion and a
decode/encode cycle neither darkens nor brightens the picture, for every matrix and both ranges."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np
import pytest

from anon_ray.media import yuv

SAMPLE = os.path.join(os.path.dirname(yuv.__file__), "..", "samples", "astronaut_pan.mp4")


@pytest.fixture(scope="module")
def planes() -> list[np.ndarray]:
    with av.open(SAMPLE) as container:
        frames = [f.reformat(format="yuv420p") for _, f in zip(range(4), container.decode(video=0))]
    return [f.to_ndarray(format="yuv420p") for f in frames]


def _frame(plane: np.ndarray, colorspace: int, color_range: int) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(plane, format="yuv420p")
    frame.colorspace, frame.color_range = colorspace, color_range
    return frame


@pytest.mark.parametrize("colorspace", [1, 2, 6, 9])  # BT.709, unspecified, BT.601, BT.2020
@pytest.mark.parametrize("color_range", [1, 2])
def test_fast_path_matches_swscale_and_round_trips_without_bias(planes, colorspace, color_range):
    errors, exact_errors = [], []
    for plane in planes:
        frame = _frame(plane, colorspace, color_range)
        rgb = yuv.to_rgb(frame)
        exact = frame.to_ndarray(format="rgb24", interpolation=yuv.TO_RGB)
        diff = rgb.astype(np.int16) - exact
        # The same matrix (a wrong one shifts colours by several levels), chroma interpolated alike.
        assert np.abs(diff).mean() < 0.25 and abs(diff.mean()) < 0.05 and np.abs(diff).max() <= 12
        back = yuv.from_rgb(rgb, "yuv420p", colorspace, color_range)
        assert (back.format.name, back.color_range) == ("yuv420p", color_range)
        errors.append(back.to_ndarray().astype(np.float64) - plane)
        swscale = av.VideoFrame.from_ndarray(exact, format="rgb24").reformat(
            format="yuv420p", dst_colorspace=yuv.SWS_MATRIX.get(colorspace), dst_color_range=color_range,
            interpolation=yuv.FROM_RGB)
        exact_errors.append(swscale.to_ndarray().astype(np.float64) - plane)
    err, exact_err = np.stack(errors), np.stack(exact_errors)
    assert abs(err.mean()) < 0.01  # swscale's fast paths: about -1 level per cycle
    assert np.mean(err**2) <= np.mean(exact_err**2) * 1.05  # as close to the source as swscale's exact path


def test_full_range_j_format_reads_as_full_range(planes):
    j = av.VideoFrame.from_ndarray(planes[0], format="yuv420p").reformat(format="yuvj420p", src_color_range=2,
                                                                          dst_color_range=2)
    np.testing.assert_array_equal(j.to_ndarray(format="yuvj420p"), planes[0])  # the same samples
    np.testing.assert_array_equal(yuv.to_rgb(j), yuv.to_rgb(_frame(planes[0], j.colorspace, 2)))


def test_other_formats_and_odd_sizes_go_through_swscale(planes):
    frame = _frame(planes[0], 1, 1)
    for other in (frame.reformat(format="yuv444p"), frame.reformat(width=frame.width - 1)):
        np.testing.assert_array_equal(yuv.to_rgb(other), other.to_ndarray(format="rgb24", interpolation=yuv.TO_RGB))
    rgb = np.ascontiguousarray(yuv.to_rgb(frame)[:, :-1])
    for pix_fmt in ("yuv420p", "yuv444p"):
        ref = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
            format=pix_fmt, dst_colorspace="ITU709", dst_color_range=1, interpolation=yuv.FROM_RGB)
        ours = yuv.from_rgb(rgb, pix_fmt, 1, 1)
        for a, b in zip(ours.planes, ref.planes):
            np.testing.assert_array_equal(_samples(a), _samples(b))


def _samples(plane) -> np.ndarray:
    """A plane's samples without the padding at the end of each line."""
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:plane.height, :plane.width]


def test_heights_that_are_not_a_multiple_of_four(planes):
    """A 4:2:0 frame 270 rows high has chroma planes of 135 rows: the planes are laid out flat, not
    in whole rows of the luma width (480x270 clips in the eval set failed on that)."""
    rgb = yuv.to_rgb(_frame(planes[0], 1, 1))
    rgb = np.ascontiguousarray(rgb[:rgb.shape[0] // 4 * 4 - 2])
    assert rgb.shape[0] % 4 == 2
    ours = yuv.from_rgb(rgb, "yuv420p", 1, 1)
    ref = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
        format="yuv420p", dst_colorspace="ITU709", dst_color_range=1, interpolation=yuv.FROM_RGB)
    for a, b in zip(ours.planes, ref.planes):
        diff = _samples(a).astype(np.int16) - _samples(b)
        assert diff.shape == (a.height, a.width) and np.abs(diff).mean() < 0.6 and np.abs(diff).max() <= 3
    exact = ref.to_ndarray(format="rgb24", interpolation=yuv.TO_RGB)
    assert np.abs(yuv.to_rgb(ref).astype(np.int16) - exact).mean() < 0.25


def test_reused_frames_and_temporaries_carry_nothing_from_the_frame_before(planes):
    """The writer's frame is written again for each frame (from_rgb's `reuse`) and the decoder's
    frame-sized temporaries are this thread's from its last frame (arrays.py): a frame converted
    after another comes out as it does alone, in a thread that converted nothing before."""
    frames = [_frame(plane, 1, 1) for plane in planes[:2]]
    with ThreadPoolExecutor(1) as alone:
        second_alone = alone.submit(yuv.to_rgb, frames[1]).result()
        written_alone = alone.submit(yuv.from_rgb, second_alone, "yuv420p", 1, 1).result()
    first, second = (yuv.to_rgb(frame) for frame in frames)
    np.testing.assert_array_equal(second, second_alone)
    assert not np.array_equal(first, second)
    reused = yuv.from_rgb(first, "yuv420p", 1, 1)
    written = yuv.from_rgb(second, "yuv420p", 1, 1, reuse=reused)
    assert written is reused  # written in place, not a new frame
    for a, b in zip(written.planes, written_alone.planes):
        np.testing.assert_array_equal(_samples(a), _samples(b))
