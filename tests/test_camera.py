"""The camera's shift between frames, measured on a real photo panned by known amounts, and what
it does to tracks and to the boxes drawn where the detector found nothing."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from anon_ray.config import ImageConfig, TrackConfig
from anon_ray.core.refine import mask_boxes
from anon_ray.media.image import read_image
from anon_ray.track import track
from anon_ray.track.camera import CameraMeter
from anon_ray.types import FACE, CameraPath, Detections

PHOTO = read_image(str(Path(__file__).parents[1] / "anon_ray" / "samples" / "astronaut.jpg"), ImageConfig()).rgb


def panned(offsets: np.ndarray, size=(320, 240), blur: np.ndarray | None = None) -> list[np.ndarray]:
    """Windows of the photo whose top-left corner sits at each offset (x, y): the camera pans by
    the offsets' steps, so the picture's content moves by minus them; `blur`: px of horizontal
    motion blur per frame."""
    w, h = size
    frames = [np.ascontiguousarray(PHOTO[y:y + h, x:x + w]) for x, y in offsets]
    return frames if blur is None else [cv2.blur(f, (int(b), 1)) if b > 1 else f for f, b in zip(frames, blur)]


def test_a_pan_is_measured_to_a_pixel_through_its_motion_blur():
    steps = np.array([[0, 0], [3, 1], [6, 0], [12, -2], [25, 0], [40, 5], [25, 0], [2, 2], [0, 0], [-9, -4]])
    offsets = 60 + np.cumsum(steps, axis=0)
    frames = panned(offsets, blur=np.full(len(steps), 9))  # steps up to an eighth of the picture
    meter = CameraMeter(width=TrackConfig().camera_width)
    path = CameraPath.concat([meter.measure(7, frames[:5]), meter.measure(12, frames[5:])])  # continued
    assert path.frame.tolist() == list(range(7, 17))
    np.testing.assert_allclose(path.xy, -(offsets - offsets[0]), atol=1.0)
    # Measured on a copy a quarter the size: still within a few pixels.
    quarter = CameraMeter(width=80).measure(0, frames)
    np.testing.assert_allclose(quarter.xy, -(offsets - offsets[0]), atol=4.0)


def test_a_still_camera_and_a_cut_give_a_still_path():
    meter = CameraMeter(width=160)
    still = meter.measure(0, panned(np.array([[100, 100]] * 4)))
    assert not np.any(still.xy)
    noisy = panned(np.array([[100, 100]] * 3))
    rng = np.random.default_rng(0)
    noisy = [np.clip(f + rng.normal(0, 2, f.shape), 0, 255).astype(np.uint8) for f in noisy]
    unrelated = np.ascontiguousarray(np.rot90(PHOTO)[:240, :320])
    path = CameraMeter(width=160).measure(0, [*noisy, unrelated])
    assert not np.any(path.xy)  # sensor noise, then a cut: nothing moved


def test_tiny_frames_give_a_still_path_and_skipped_frames_are_refused():
    """A picture too small to correlate (6 px tall) holds still rather than failing the asset;
    frames out of order are the caller's mistake."""
    meter = CameraMeter(width=TrackConfig().camera_width)
    tiny = [np.ascontiguousarray(PHOTO[y:y + 6, 100:116]) for y in (100, 103, 106)]
    assert not np.any(meter.measure(0, tiny).xy)
    with pytest.raises(ValueError, match="does not follow"):
        meter.measure(5, tiny[:1])


def test_a_pan_keeps_one_track_and_the_boxes_follow_the_scene():
    """A face still in the scene while the camera whips past it: the detector sees it on frames
    0-9 and 16-25 only, 40 px further left each frame. With the path it stays one track and the
    missed frames are masked where the face is; without it they get boxes held in the wrong place."""
    frames = np.r_[0:10, 16:26]
    x = 600.0 - 40.0 * np.arange(26)
    path = CameraPath(np.arange(26), np.c_[x - x[0], np.zeros(26)])
    dets = Detections.build(frames, np.c_[x[frames], np.full(20, 300), x[frames] + 50, np.full(20, 360)],
                            np.full(20, 0.9), FACE)
    cfg = TrackConfig()
    assert len(set(track(dets, cfg, range(26)).track)) > 2  # it never stays in the same place in the picture
    tracked = track(dets, cfg, range(26), path)
    assert len(set(tracked.track)) == 1
    boxes = mask_boxes(tracked, cfg, range(26), (1280, 720), path)
    for f in range(10, 16):  # every missed frame has a box over the face where it now is
        here = boxes.xyxy[boxes.frame == f]
        assert np.any((here[:, 0] <= x[f] + 1) & (here[:, 2] >= x[f] + 49)), f
    held = mask_boxes(track(dets, cfg, range(26)), cfg, range(26), (1280, 720))
    assert not np.any((held.frame == 13) & (held.xyxy[:, 0] <= x[13] + 1) & (held.xyxy[:, 2] >= x[13] + 49))


def test_a_still_path_draws_what_no_path_draws():
    rng = np.random.default_rng(3)
    frames = np.sort(rng.choice(60, 35, replace=False))
    dets = Detections.build(frames, np.c_[frames * 3.0, frames, frames * 3.0 + 40, frames + 40],
                            np.full(35, 0.9), FACE)
    still = CameraPath(np.arange(60), np.zeros((60, 2)))
    cfg = TrackConfig()
    a = mask_boxes(track(dets, cfg, range(60), still), cfg, range(60), (640, 480), still)
    b = mask_boxes(track(dets, cfg, range(60)), cfg, range(60), (640, 480))
    np.testing.assert_array_equal(a.xyxy, b.xyxy)
    np.testing.assert_array_equal(a.frame, b.frame)
