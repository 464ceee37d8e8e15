"""Confine a worker process to cores of its own (`cluster.pin_cpus`).

Ray reserves CPUs as numbers, not as cores: unpinned, a worker's threads (ONNX Runtime, the
decoder, x264) run on any core, so a lightly loaded node lends its idle cores to whichever worker
runs and workers on a busy node contend for the same caches. Pinned, a worker gets what its
reservation pays for, as under a container's CPU limit.

Cores are claimed with advisory locks on node-local files, held for the life of the process: the
kernel drops them when the process dies, so a restarted actor claims again and two live workers on
one node never share a core while free ones remain.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from dataclasses import dataclass

LOCK_DIR = os.path.join(tempfile.gettempdir(), "anon_ray-cores")


@dataclass(frozen=True)
class CoreClaim:
    cores: tuple[int, ...]
    fds: tuple[int, ...]  # the open lock files: closing them (or exiting) releases the cores


def _try_lock(core: int, lock_dir: str) -> int | None:
    fd = os.open(os.path.join(lock_dir, f"core-{core}.lock"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def claim_cores(count: int, lock_dir: str = LOCK_DIR) -> CoreClaim | None:
    """Pin every thread of this process (and those it starts later) to `count` cores that no other
    live claimer on this node holds; None, and nothing pinned, when fewer are free."""
    os.makedirs(lock_dir, exist_ok=True)
    held: list[tuple[int, int]] = []
    for core in sorted(os.sched_getaffinity(0)):
        if len(held) == count:
            break
        fd = _try_lock(core, lock_dir)
        if fd is not None:
            held.append((core, fd))
    if len(held) < count:
        for _, fd in held:
            os.close(fd)
        return None
    cores = {core for core, _ in held}
    _pin_all_threads(cores)
    return CoreClaim(tuple(sorted(cores)), tuple(fd for _, fd in held))


def _pin_all_threads(cores: set[int]) -> None:
    """sched_setaffinity acts on one thread, and a new thread inherits its creator's mask: a
    runtime thread not yet pinned may start another while we walk the list, so walk until a
    listing shows no thread left unpinned; from then on every creator is pinned."""
    pinned: set[str] = set()
    while todo := set(os.listdir("/proc/self/task")) - pinned:
        for tid in todo:
            try:
                os.sched_setaffinity(int(tid), cores)
            except (ProcessLookupError, PermissionError):
                pass  # a thread that ended meanwhile
        pinned |= todo
