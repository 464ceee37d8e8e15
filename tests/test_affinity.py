"""cluster.pin_cpus: workers claim disjoint cores, released when the claimer dies."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
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


def _claim_while_threads_start(lock_dir: str, report) -> None:
    """In a child process: one thread starts threads (that start threads) throughout the claim,
    as Ray's and ONNX Runtime's do while an actor comes up; report every thread's mask after."""
    stop = threading.Event()
    for _ in range(200):  # threads to pin first (a listing is in thread order), widening the race
        threading.Thread(target=stop.wait, daemon=True).start()

    def spawner():
        while not stop.is_set():
            threading.Thread(target=stop.wait, daemon=True).start()

    sys.setswitchinterval(1e-6)  # the spawner runs between the claim's steps, as native threads do
    threading.Thread(target=spawner, daemon=True).start()
    claim = claim_cores(1, lock_dir)
    masks = {tuple(sorted(os.sched_getaffinity(int(t)))) for t in os.listdir("/proc/self/task")}
    stop.set()
    report.put((list(claim.cores), sorted(masks)))


@pytest.mark.skipif(len(CORES) < 2, reason="needs two cores")
def test_threads_started_during_the_claim_are_pinned_too(tmp_path):
    ctx = mp.get_context("spawn")
    for _ in range(3):
        report = ctx.Queue()
        proc = ctx.Process(target=_claim_while_threads_start, args=(str(tmp_path), report))
        proc.start()
        cores, masks = report.get(timeout=60)
        proc.join()
        assert masks == [tuple(cores)], masks
