"""The Ray engine on real local clusters of 2 CPUs: job submission, worker death, time limits,
streaming and resources.

Worker processes are found in this test process's own process tree (never by name machine-wide:
other Ray clusters may run beside this one) and identified by the title Ray gives them:
"ray::SegmentActor" when idle, "ray::SegmentActor.segment" while running a segment. Which pass of
a segment a worker is in is read from outside, as the files it has open and the part files it
writes (named after its pid), so kills can aim at decoding or encoding without hooks in the code.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import cv2
import psutil
import pytest
import ray
from conftest import REPO, SAMPLES, manifest_rows
from test_cut_independence import (
    INTEL,
    MODELS,
    VIDEOS,
    clip_config,
    local_run,
    video_asset,
)
from test_faults import check_manifest_true, latest_rows

from anon_ray.config import AppConfig
from anon_ray.core import consistency
from anon_ray.io.files import TMP_MARKER
from anon_ray.io.inventory import INTERNAL_DIR
from anon_ray.media import packets
from anon_ray.run import distributed, job
from anon_ray.types import Asset

VENV_BIN = Path(REPO / ".venv" / "bin")
PAN = SAMPLES / "astronaut_pan.mp4"  # 75 frames, one keyframe: 1 s segments detect for seconds each
# A part while its encoder writes it: io.files.temp_path_beside of the name Worker.segment gives it.
WRITING = re.compile(rf"part-\d{{5}}\.mp4\.tmp(\d+)\.mp4{re.escape(TMP_MARKER)}")


def with_cluster(cfg: AppConfig, **settings) -> AppConfig:
    return replace(cfg, cluster=replace(cfg.cluster, **settings))


def leftovers(out: Path) -> list[Path]:
    """Anything a run must not leave behind: its scratch folder, parts, temporary files."""
    return [p for p in out.rglob("*") if p.name == "tmp" or TMP_MARKER in p.name or p.name.startswith("part-")]


def actor_pids(title: str = "ray::SegmentActor") -> set[int]:
    """Pool workers of the cluster this process started, by process title prefix."""
    pids = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            if (proc.cmdline() or [""])[0].startswith(title):
                pids.add(proc.pid)
        except psutil.Error:
            pass
    return pids


# ---------------------------------------------------------------- a cluster started by `ray start`


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_job_submit_to_running_cluster(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(SAMPLES / "astronaut.jpg", src)
    shutil.copy(VIDEOS / "intel_people-detection.mp4", src)
    # Own temp dir: `ray start` records its address there, so no other ray.init() on this machine
    # finds and joins this cluster. Own token: nothing read from or written to ~/.ray.
    ray_tmp = Path(os.path.join("/tmp", f"anonray-{secrets.token_hex(4)}"))  # short: unix socket paths
    dash, metrics = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(PATH=f"{VENV_BIN}:{env['PATH']}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    head = subprocess.Popen(
        [VENV_BIN / "ray", "start", "--head", "--block", "--num-cpus=2", f"--port={free_port()}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
         f"--metrics-export-port={metrics}",
         f"--temp-dir={ray_tmp}", "--disable-usage-stats"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_dashboard(dash, head)
        submit = [VENV_BIN / "ray", "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(REPO),
                  "--", "python", "-m", "anon_ray", f"input={src}", f"output={out}", f"models.cache_dir={MODELS}"]
        # The dashboard answers before its job agent has registered (seen with the suite's other
        # process loading both cores); such a refusal starts nothing, and Ray asks to try again.
        deadline = time.time() + 60
        while True:
            proc = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=300)
            if "No available agent to submit job" not in proc.stderr or time.time() > deadline:
                break
            time.sleep(2)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "2 ok, 0 failed" in proc.stdout + proc.stderr
        assert (out / "astronaut.jpg").is_file() and (out / "intel_people-detection.mp4").is_file()
        assert len(list((out / "_anon_ray" / "manifest").glob("*.parquet"))) == 1
        assert not leftovers(out)
        # What Prometheus scrapes from the node once the job has ended (a nightly run's figures): the
        # driver reports every 10 s, and what it had not reported yet is sent as it shuts down.
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read().decode()
        totals = scraped_totals(scraped)
        video = next(r for r in manifest_rows(out)
                     if r["kind"] == "video")
        assert totals == {("ray_anon_ray_assets_total", "image", "ok"): 1,
                          ("ray_anon_ray_assets_total", "video", "ok"): 1,
                          ("ray_anon_ray_segments_total", "", ""): video["segments"],
                          ("ray_anon_ray_frames_total", "", ""): video["frames"]}, scraped
    finally:
        stop_cluster(head)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def scraped_totals(text: str) -> dict[tuple[str, str, str], float]:
    """Our counters in a Prometheus scrape: (series, kind tag, status tag) -> value, summed over
    the processes that reported them."""
    totals: dict[tuple[str, str, str], float] = {}
    for m in re.finditer(r"^(ray_anon_ray_\w+_total)\{([^}]*)\} (\S+)$", text, re.M):
        tags = dict(re.findall(r'(\w+)="([^"]*)"', m[2]))
        key = (m[1], tags.get("kind", ""), tags.get("status", ""))
        totals[key] = totals.get(key, 0.0) + float(m[3])
    return totals


def wait_for_dashboard(port: int, head: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        assert head.poll() is None, "ray start exited"
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:
            return  # up, and asking for the token
        except OSError:
            time.sleep(0.5)
    pytest.fail("the Ray dashboard did not come up")


def stop_cluster(head: subprocess.Popen) -> None:
    """Stop what `ray start` started - its process group and descendants - and nothing else (not `ray stop`)."""
    procs = [psutil.Process(head.pid)] + psutil.Process(head.pid).children(recursive=True)
    os.killpg(head.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=5)
    for proc in alive:  # a graceful Ray shutdown takes ~30 s; this cluster's state is disposable
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


# ---------------------------------------------------------------- an embedded cluster in this process


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_pool_leaves_room_for_light_tasks():
    fits = with_cluster(AppConfig(), workers=2, cpus_per_worker=0.5)
    distributed.check_resources(fits, {"CPU": 2.0})
    for cfg in (with_cluster(fits, workers=4), with_cluster(fits, cpus_per_worker=1.0),
                with_cluster(fits, gpus_per_worker=0.5)):
        with pytest.raises(ValueError):
            distributed.check_resources(cfg, {"CPU": 2.0})
    assert distributed._plan._default_options["num_cpus"] == distributed.LIGHT_TASK_CPUS
    assert distributed._finalize._default_options["num_cpus"] == distributed.LIGHT_TASK_CPUS


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_pinned_workers_hold_a_core_each_from_before_their_models_load(cluster):
    cfg = with_cluster(clip_config("unused", 0.0), workers=2, cpus_per_worker=0.9, pin_cpus=True)
    pool = distributed.make_pool(cfg)
    try:
        pids = ray.get([actor.pid.remote() for actor in pool])
        # Every thread, ONNX Runtime's pool included (it starts with the Worker, after the claim).
        cores = [{frozenset(os.sched_getaffinity(int(t))) for t in os.listdir(f"/proc/{pid}/task")} for pid in pids]
        assert all(len(c) == 1 and len(next(iter(c))) == 1 for c in cores), cores
        assert cores[0] != cores[1]
    finally:
        for actor in pool:
            ray.kill(actor)


def test_results_stream_before_listing_ends(cluster, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    small = cv2.resize(cv2.imread(str(SAMPLES / "astronaut.jpg")), (96, 96))
    total, bound = 12, 3
    log: list[tuple[int, int]] = []  # (assets listed, results received) at each listing step
    results = []
    first_at = None

    def listing():
        for i in range(total):
            path = src / f"img{i:02d}.jpg"
            cv2.imwrite(str(path), small)
            log.append((i + 1, len(results)))
            yield Asset(str(path), path.name, path.stat().st_size, "v", "image"), str(out / path.name)

    cfg = with_cluster(clip_config(str(out), 0.0), workers=2, max_in_flight=bound)
    for res in distributed.run_assets(cfg, listing(), "stream"):
        results.append(res)
        if len(results) == 1:
            first_at = len(log)
    assert [r.failure for r in results] == [None] * total
    assert first_at < total, "the first result waited for the whole listing"
    assert all(listed - received <= bound for listed, received in log), log  # bounded driver memory
    assert not leftovers(out)


def test_progress_within_a_video_is_logged_per_segment(cluster, tmp_path, caplog):
    """A long recording is one asset: the driver says how many of its frames are done as each
    segment comes back, ending at all of them."""
    clip = SAMPLES / "astronaut_pan.mp4"
    cfg = with_cluster(clip_config(str(tmp_path / "out"), 1.0), workers=2)
    with caplog.at_level("INFO", logger="anon_ray"):
        [res] = distributed.run_assets(cfg, [(video_asset(clip), str(tmp_path / "out" / clip.name))], "progress")
    assert res.failure is None and res.segments >= 3
    done = [tuple(map(int, m.groups())) for r in caplog.records
            if (m := re.fullmatch(r"astronaut_pan.mp4: (\d+) of (\d+) frames done \((\d+) of (\d+) segments\)",
                                  r.getMessage()))]
    assert [d[2] for d in done] == list(range(1, res.segments + 1)), done
    assert [d[0] for d in done] == sorted(d[0] for d in done) and done[-1][0] == done[-1][1] == res.frames


def parts_of(out: Path) -> Path:
    """Where a run's segment parts are written (lifecycle.part_root)."""
    return out / INTERNAL_DIR / "tmp"


def writing(parts: Path, pid: int | None = None) -> dict[Path, int]:
    """The parts being written under `parts` (only by `pid`, if given), with their writers' pids."""
    found = {p: int(m[1]) for p in parts.rglob("*") if (m := WRITING.search(p.name))}
    return {p: who for p, who in found.items() if pid in (None, who)}


class Killer(threading.Thread):
    """SIGKILLs the first pool worker that `pick` names (asked every `poll_s`), then records what
    that worker was writing under `parts` when it died and which workers came up after it."""

    def __init__(self, pick: Callable[[], int | None], parts: Path, poll_s: float = 0.2):
        super().__init__(daemon=True)
        self.pick, self.parts, self.poll_s = pick, parts, poll_s
        self.killed: int | None = None
        self.left: dict[Path, int] = {}  # the parts the killed worker was writing, as it left them
        self.before: set[int] = set()  # pool workers alive at the kill
        self.after: set[int] = set()  # pool workers seen since
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.poll_s):
            if self.killed is not None:
                self.after |= actor_pids()
            elif (pid := self.pick()) is not None:
                self.kill(pid)

    def kill(self, pid: int) -> None:
        self.before = actor_pids()
        os.kill(pid, signal.SIGKILL)
        self.killed = pid
        with contextlib.suppress(psutil.Error):  # dead, not just signalled, before looking at its files
            psutil.Process(pid).wait(timeout=10)
        self.left = writing(self.parts, pid)


def running_segment(after_s: float) -> Callable[[], int | None]:
    """A worker seen running segments for `after_s`: any point of a segment."""
    first_seen: dict[int, float] = {}

    def pick() -> int | None:
        now = time.time()
        return next((pid for pid in actor_pids("ray::SegmentActor.segment")
                     if now - first_seen.setdefault(pid, now) >= after_s), None)

    return pick


def encoding(parts: Path) -> Callable[[], int | None]:
    """A worker encoding: the part it writes exists (the muxer creates it at the first encoded
    packet, once the first frames' boxes are final; detection may still run beside it)."""

    def pick() -> int | None:
        pool = actor_pids()
        return next((pid for pid in writing(parts).values() if pid in pool), None)

    return pick


def detecting(name: str) -> Callable[[], int | None]:
    """A worker decoding the input `name`. Polled from before the run, the first sighting, which
    the Killer acts on, is in its first segment before anything is encoded: that lasts seconds
    (detection has to run `max(max_gap + 1, pad)` frames ahead first), a poll ~20 ms."""

    def pick() -> int | None:
        for pid in actor_pids("ray::SegmentActor.segment"):
            with contextlib.suppress(psutil.Error):
                if any(Path(f.path).name == name for f in psutil.Process(pid).open_files()):
                    return pid
        return None

    return pick


def killed_job(tmp_path: Path, clip: Path, seconds: float, killer: Killer):
    """job.run of `clip` alone on the Ray engine (2 workers, output tmp_path/out) while `killer`
    watches; returns the asset's result."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(clip, src)
    results = []

    def engine(cfg, todo, run_id):
        for res in distributed.run_assets(cfg, todo, run_id):
            results.append(res)
            yield res

    killer.start()
    try:
        job.run(with_cluster(clip_config(str(out), seconds, input=str(src)), workers=2), engine, out=io.StringIO())
    finally:
        killer.done.set()
        killer.join()
    [res] = results
    return res


def check_retried_like_unkilled(killer: Killer, res, clip: Path, seconds: float, out: Path) -> None:
    """The killed worker was restarted and its segment retried: the output is complete and masked
    as without the fault, the manifest says so, nothing is left behind."""
    assert killer.killed is not None, "the moment to kill never came"
    assert killer.after - killer.before, "the killed worker was not restarted"
    assert res.failure is None, res.failure
    reference = local_run(str(clip), seconds)
    assert (res.frames, res.segments) == (reference.frames, reference.segments)
    assert len(packets.scan_packets(res.dst)) == reference.frames  # the published file itself
    report = consistency.compare_masks(reference.tracks, res.tracks)
    assert report["matched_share"] == report["matched_share_other"] == 1.0, report
    assert report["unmasked"] == report["unmasked_other"] == 0, report
    assert len(set(res.tracks.track)) == len(set(reference.tracks.track))
    rows = latest_rows(out)
    assert (rows[clip.name]["status"], rows[clip.name]["frames"]) == ("ok", reference.frames), rows
    check_manifest_true(out, rows)
    assert not leftovers(out)


@pytest.mark.slow
def test_worker_killed_mid_segment(cluster, tmp_path):
    # The pan clip, as the two tests below: its unkilled reference run is computed once for all
    # three (the 275-frame clip's took ~18 s of a ~45 s test; the suite must stay under 15 minutes).
    killer = Killer(running_segment(1.0), parts_of(tmp_path / "out"))
    res = killed_job(tmp_path, PAN, 1.0, killer)
    check_retried_like_unkilled(killer, res, PAN, 1.0, tmp_path / "out")


@pytest.mark.slow
def test_worker_killed_while_encoding(cluster, tmp_path):
    parts = parts_of(tmp_path / "out")
    killer = Killer(encoding(parts), parts, poll_s=0.01)  # a part's encoding lasts ~0.2 s here
    res = killed_job(tmp_path, PAN, 1.0, killer)
    assert set(killer.left.values()) == {killer.killed}, "the worker was not killed while writing a part"
    check_retried_like_unkilled(killer, res, PAN, 1.0, tmp_path / "out")


@pytest.mark.slow
def test_worker_killed_while_detecting(cluster, tmp_path):
    parts = parts_of(tmp_path / "out")
    killer = Killer(detecting(PAN.name), parts, poll_s=0.02)
    res = killed_job(tmp_path, PAN, 1.0, killer)
    assert killer.left == {}, "the worker was killed once encoding had begun"
    check_retried_like_unkilled(killer, res, PAN, 1.0, tmp_path / "out")


@pytest.mark.slow
def test_asset_time_limit(cluster, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(distributed, "KILL_GRACE_S", 1.0)
    out = tmp_path / "out"
    video = video_asset(INTEL)  # 70 segments: over a minute of work per worker even on a fast machine
    photo = SAMPLES / "astronaut.jpg"
    todo = [(video, str(out / video.relpath)),
            (Asset(str(photo), photo.name, photo.stat().st_size, "v", "image"), str(out / photo.name))]
    # One asset at a time: the photo only starts once the video is closed, on the restarted workers,
    # whose model loading its limit also covers (8 s was too tight with a second test process
    # loading both cores).
    cfg = with_cluster(clip_config(str(out), 2.0, asset_timeout_s=20.0), workers=2, max_in_flight=1)
    with caplog.at_level("WARNING", logger="anon_ray"):
        results = {r.asset.relpath: r for r in distributed.run_assets(cfg, todo, "limit")}
    timed_out = results[video.relpath]
    assert timed_out.failure is not None and timed_out.failure.error_class == "Timeout"
    assert 20.0 <= timed_out.seconds < 20.0 + 30, timed_out.seconds
    assert "killing worker" in caplog.text  # its segments were running: stopped by force
    assert results[photo.name].failure is None
    assert not (out / video.relpath).exists()
    assert not leftovers(out)
