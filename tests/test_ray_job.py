"""The Ray engine on real local clusters of 2 CPUs: job submission, worker death, time limits,
streaming and resources.

Worker processes are found in this test process's own process tree (never by name machine-wide:
other Ray clusters may run beside this one) and identified by the title Ray gives them:
"ray::SegmentActor" when idle, "ray::SegmentActor.segment" while running a segment.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import cv2
import psutil
import pytest
import ray

from anon_ray import consistency, ray_job
from anon_ray.config import AppConfig
from anon_ray.media import TMP_MARKER
from anon_ray.types import Asset

from conftest import REPO, SAMPLES
from test_cut_independence import HAMILTON, MODELS, VIDEOS, clip_config, local_run, video_asset
from test_cut_independence import intel_cut  # noqa: F401 - a fixture

VENV_BIN = Path(REPO / ".venv" / "bin")


def with_cluster(cfg: AppConfig, **cluster) -> AppConfig:
    return replace(cfg, cluster=replace(cfg.cluster, **cluster))


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
    dash = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(PATH=f"{VENV_BIN}:{env['PATH']}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    head = subprocess.Popen(
        [VENV_BIN / "ray", "start", "--head", "--block", "--num-cpus=2", f"--port={free_port()}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
         f"--temp-dir={ray_tmp}", "--disable-usage-stats"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_dashboard(dash, head)
        proc = subprocess.run(
            [VENV_BIN / "ray", "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(REPO),
             "--", "python", "-m", "anon_ray", f"input={src}", f"output={out}", f"models.cache_dir={MODELS}"],
            env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "2 ok, 0 failed" in proc.stdout + proc.stderr
        assert (out / "astronaut.jpg").is_file() and (out / "intel_people-detection.mp4").is_file()
        assert (out / "_anon_ray" / "manifest.parquet").is_file()
        assert not leftovers(out)
    finally:
        stop_cluster(head)
        shutil.rmtree(ray_tmp, ignore_errors=True)


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
    ray_job.check_resources(fits, {"CPU": 2.0})
    for cfg in (with_cluster(fits, workers=4), with_cluster(fits, cpus_per_worker=1.0),
                with_cluster(fits, gpus_per_worker=0.5)):
        with pytest.raises(ValueError):
            ray_job.check_resources(cfg, {"CPU": 2.0})
    assert ray_job._plan._default_options["num_cpus"] == ray_job.LIGHT_TASK_CPUS
    assert ray_job._finalize._default_options["num_cpus"] == ray_job.LIGHT_TASK_CPUS


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
    for res in ray_job.run_assets(cfg, listing(), "stream"):
        results.append(res)
        if len(results) == 1:
            first_at = len(log)
    assert [r.failure for r in results] == [None] * total
    assert first_at < total, "the first result waited for the whole listing"
    assert all(listed - received <= bound for listed, received in log), log  # bounded driver memory
    assert not leftovers(out)


class Killer(threading.Thread):
    """SIGKILLs the first pool worker seen running a segment for at least `after_s`."""

    def __init__(self, after_s: float = 1.0):
        super().__init__(daemon=True)
        self.after_s = after_s
        self.killed: int | None = None
        self.before: set[int] = set()  # pool workers alive at the kill
        self.after: set[int] = set()  # pool workers seen since
        self.done = threading.Event()

    def run(self) -> None:
        first_seen: dict[int, float] = {}
        while not self.done.wait(0.2):
            if self.killed is not None:
                self.after |= actor_pids()
                continue
            now = time.time()
            for pid in actor_pids("ray::SegmentActor.segment"):
                if now - first_seen.setdefault(pid, now) >= self.after_s:
                    self.before = actor_pids()
                    os.kill(pid, signal.SIGKILL)
                    self.killed = pid
                    break


@pytest.mark.slow
def test_worker_killed_mid_segment(cluster, tmp_path):
    asset = video_asset(HAMILTON)
    cfg = with_cluster(clip_config(str(tmp_path), 2.0), workers=2)
    killer = Killer()
    killer.start()
    try:
        [res] = list(ray_job.run_assets(cfg, [(asset, str(tmp_path / asset.relpath))], "fault"))
    finally:
        killer.done.set()
        killer.join()
    assert killer.killed is not None, "no segment was seen running"
    assert killer.after - killer.before, "the killed worker was not restarted"
    assert res.failure is None, res.failure
    # The killed call was retried: every segment's frames are there, masked as without the fault.
    reference = local_run(str(HAMILTON), 2.0)
    assert (res.frames, res.segments) == (reference.frames, reference.segments)
    report = consistency.compare_masks(reference.tracks, res.tracks)
    assert report["matched_share"] == report["matched_share_other"] == 1.0, report
    assert report["unmasked"] == report["unmasked_other"] == 0, report
    assert len(set(res.tracks.track)) == len(set(reference.tracks.track))
    assert not leftovers(tmp_path)


@pytest.mark.slow
def test_asset_time_limit(cluster, intel_cut, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(ray_job, "KILL_GRACE_S", 1.0)
    out = tmp_path / "out"
    video = video_asset(intel_cut)  # 15 segments: ~20 s of work per worker even on a fast machine
    photo = SAMPLES / "astronaut.jpg"
    todo = [(video, str(out / video.relpath)),
            (Asset(str(photo), photo.name, photo.stat().st_size, "v", "image"), str(out / photo.name))]
    # One asset at a time: the photo only starts once the video is closed, on the restarted workers.
    cfg = with_cluster(clip_config(str(out), 2.0, asset_timeout_s=6.0), workers=2, max_in_flight=1)
    with caplog.at_level("WARNING", logger="anon_ray"):
        results = {r.asset.relpath: r for r in ray_job.run_assets(cfg, todo, "limit")}
    timed_out = results[video.relpath]
    assert timed_out.failure is not None and timed_out.failure.error_class == "Timeout"
    assert 6.0 <= timed_out.seconds < 6.0 + 30, timed_out.seconds
    assert "killing worker" in caplog.text  # its segments were running: stopped by force
    assert results[photo.name].failure is None
    assert not (out / video.relpath).exists()
    assert not leftovers(out)
