"""A run's progress for the Ray dashboard and Prometheus, through ray.util.metrics.

The driver records them: assets finished (by kind and status), failures (by error class), video
segments and frames done, assets in flight. Each node's metrics agent exports them beside Ray's
own, as `ray_anon_ray_*` on the node's metrics export port; what the driver has not reported yet
when it ends is sent as Ray shuts it down (tests/test_ray_job.py scrapes a node after a job). No
tag holds a file name or a path: a night's archive would make one series per file, and a path can
be personal data.
"""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge

from anon_ray.types import AssetResult, SegmentResult


class RunMetrics:
    """The counters one driver keeps (ray.util.metrics objects are per process)."""

    def __init__(self) -> None:
        self.assets = Counter("anon_ray_assets", "Assets finished, by kind and status.", ("kind", "status"))
        self.failures = Counter("anon_ray_failures", "Assets failed, by error class.", ("error_class",))
        self.segments = Counter("anon_ray_segments", "Video segments masked and encoded.")
        self.frames = Counter("anon_ray_frames", "Video frames masked and encoded.")
        self.in_flight = Gauge("anon_ray_assets_in_flight", "Assets being planned, masked or finalized.")

    def asset(self, result: AssetResult, still_open: int) -> None:
        status = "failed" if result.failure else "ok"
        self.assets.inc(tags={"kind": result.asset.kind, "status": status})
        if result.failure:
            self.failures.inc(tags={"error_class": result.failure.error_class})
        self.in_flight.set(still_open)

    def segment(self, result: SegmentResult) -> None:
        self.segments.inc()
        if result.frames_written:
            self.frames.inc(result.frames_written)

