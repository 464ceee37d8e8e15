"""Per-class multi-object tracking of detections (ByteTrack-style, Kalman-predicted IoU matching)."""

from anon_ray.track.bytetrack import ByteTracker, track

__all__ = ["ByteTracker", "track"]
