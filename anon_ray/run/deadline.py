"""An asset's time limit as the worker itself checks it (the in-process engine)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from anon_ray.run.errors import Timeout


@dataclass(frozen=True)
class Deadline:
    """When an asset's time is up, for an engine that cannot stop a worker from outside.

    The in-process engine has no driver to kill an overdue call, so the worker checks this
    between batches and frames. Ray calls get NO_DEADLINE: there the driver enforces the limit.
    """

    at: float = math.inf  # time.monotonic(): immune to wall-clock steps
    limit_s: float = 0.0

    @staticmethod
    def after(limit_s: float) -> "Deadline":
        """From now; 0 (or less) means no limit, as for the Ray engine."""
        return Deadline(time.monotonic() + limit_s, limit_s) if limit_s > 0 else NO_DEADLINE

    def check(self) -> None:
        if time.monotonic() >= self.at:
            raise Timeout.after_limit(self.limit_s)


NO_DEADLINE = Deadline()
