"""cluster.pin_cpus: workers claim disjoint cores, released when the claimer dies."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading

import pytest

from anon_ray.run.affinity import claim_cores

CORES = sorted(os.sched_getaffinity(0))


def _claim_and_report(lock_dir: str, count: int, report, release) -> None:
    """In a child process: claim, report what this process and a thread started before the claim
    are pinned to, then hold the claim until told to exit."""
    started = threading.Event()
    holder = threading.Thread(target=lambda: (started.set(), release.wait()), daemon=True)
    holder.start()
    started.wait()
    claim = claim_cores(count, lock_dir)
    report.put(None if claim is None else (list(claim.cores), sorted(os.sched_getaffinity(0)),
                                           sorted(os.sched_getaffinity(holder.native_id))))
    release.wait()


def start_claimer(ctx, lock_dir, count):
    report, release = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_claim_and_report, args=(lock_dir, count, report, release))
    proc.start()
    return proc, report.get(timeout=60), release


@pytest.mark.skipif(len(CORES) < 2, reason="needs two cores")
def test_claims_are_disjoint_cover_every_thread_and_end_with_the_process(tmp_path):
    ctx = mp.get_context("spawn")
    lock_dir = str(tmp_path)
    first, got1, release1 = start_claimer(ctx, lock_dir, 1)
    cores1, own1, thread1 = got1
    assert len(cores1) == 1 and own1 == cores1 and thread1 == cores1
    second, got2, release2 = start_claimer(ctx, lock_dir, len(CORES) - 1)
    assert set(got2[0]).isdisjoint(cores1) and set(got2[0]) | set(cores1) == set(CORES)
    # Every core is held: a third claimer gets none and stays unpinned.
    third, got3, release3 = start_claimer(ctx, lock_dir, 1)
    assert got3 is None
    release3.set()
    third.join()
    # The first claimer dies without releasing anything by hand: its core is free again.
    first.kill()
    first.join()
    again, got4, release4 = start_claimer(ctx, lock_dir, 1)
    assert got4[0] == cores1
    for release, proc in ((release2, second), (release4, again)):
        release.set()
        proc.join()
