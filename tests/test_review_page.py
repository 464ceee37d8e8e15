"""anon-ray-review's page: its HTTP API on a real server, and the page driven in Debian's headless
Chromium (make browser installs it): open a queued asset, draw a box, approve, the output changes."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SAMPLES
from test_review import _frames

from anon_ray.config import AppConfig, DetectConfig, FaceConfig, PlateConfig, ReviewConfig
from anon_ray.run import job
from anon_ray.run.local import run_local
from anon_ray.tools import review_server

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def served(tmp_path):
    """A job's output (detection off: nothing masked, every face missed) and its review server."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(SAMPLES / "astronaut_pan.mp4", src / "clip.mp4")
    blind = DetectConfig(face=FaceConfig(enabled=False), plate=PlateConfig(enabled=False))
    cfg = replace(AppConfig(input=str(src), output=str(out)), detect=blind,
                  review=ReviewConfig(boxes=True, port=0))
    assert job.run(cfg, run_local, out=io.StringIO()).ok == 1
    server = review_server.serve(cfg)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", out
    server.shutdown()
    server.server_close()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read()


def _post(url: str, body: bytes = b"") -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_api_serves_masked_frames_and_checks_corrections(served):
    from conftest import composed

    assert ReviewConfig().host == composed("config").review.host == "127.0.0.1"  # this machine only
    assert ReviewConfig().boxes is composed("config").review.boxes is False  # box positions: off (I5)
    base, out = served
    assert _get(base + "/").startswith(b"<!DOCTYPE html>")
    queue = json.loads(_get(base + "/api/queue"))
    assert [(a["relpath"], a["frames"], a["reviewed"]) for a in queue["items"]] == [("clip.mp4", 75, False)]
    assert (queue["total"], queue["reviewed"]) == (1, 0)
    assert json.loads(_get(base + "/api/queue?offset=1"))["items"] == []
    jpeg = cv2.imdecode(np.frombuffer(_get(base + "/api/frame?path=clip.mp4&i=40"), np.uint8), cv2.IMREAD_COLOR)
    masked = _frames(out / "clip.mp4")[40]
    assert jpeg.shape == masked.shape and np.abs(jpeg[:, :, ::-1].astype(float) - masked).mean() < 3
    assert json.loads(_get(base + "/api/boxes?path=clip.mp4&i=40")) == []
    status, answer = _post(base + "/api/overrides?path=clip.mp4", b'{"version": 1, "ad": []}')
    assert status == 400 and "unknown keys" in answer["error"]
    assert not (out / "_anon_ray" / "review" / "overrides" / "clip.mp4.json").exists()
    doc = {"version": 1, "add": [{"box": [100, 50, 200, 150], "frames": [40, 41]}], "suppress": []}
    assert _post(base + "/api/overrides?path=clip.mp4", json.dumps(doc).encode()) == (200, {"saved": True})
    boxes = json.loads(_get(base + "/api/boxes?path=clip.mp4&i=40"))
    assert [(b["box"], b["added"]) for b in boxes] == [([100.0, 50.0, 200.0, 150.0], True)]
    assert _post(base + "/api/approve?path=clip.mp4") == (200, {"status": "re-rendered"})
    queue = json.loads(_get(base + "/api/queue"))
    assert queue["items"][0]["reviewed"] is True and queue["reviewed"] == 1
    assert _post(base + "/api/approve?path=nothing.mp4")[0] == 404


def test_scrubbing_forward_decodes_each_frame_once(served, monkeypatch):
    """The open output's decoder is parked after the frame read: the next frames continue it, and
    only a step back opens a decode from a keyframe again. Frames are those of the output."""
    base, out = served
    calls = []
    real = review_server.decode
    monkeypatch.setattr(review_server, "decode", lambda *a: (calls.append(a[3]), real(*a))[1])
    masked = _frames(out / "clip.mp4")
    for i in [30, 31, 32, 33, 34, 10, 11]:
        jpeg = cv2.imdecode(np.frombuffer(_get(base + f"/api/frame?path=clip.mp4&i={i}"), np.uint8), cv2.IMREAD_COLOR)
        assert np.abs(jpeg[:, :, ::-1].astype(float) - masked[i]).mean() < 3, i
    assert calls == [30, 10]
    with pytest.raises(urllib.error.HTTPError) as err:  # past the last frame: refused
        _get(base + "/api/frame?path=clip.mp4&i=75")
    assert err.value.code == 400
    assert _get(base + "/api/frame?path=clip.mp4&i=74")  # and the next request is served


def _browser(tmp_path):
    if not (os.access(CHROMIUM, os.X_OK) and os.access(DRIVER, os.X_OK)):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make browser)")
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager look for a browser online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,900", f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"):
        opts.add_argument(flag)
    return webdriver.Chrome(options=opts, service=Service(DRIVER))


def test_page_in_chromium_adds_a_box_and_approves(served, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, out = served
    before_bytes = (out / "clip.mp4").read_bytes()
    before = _frames(out / "clip.mp4")
    driver = _browser(tmp_path)
    try:
        wait = WebDriverWait(driver, 120)
        driver.get(base + "/")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#queue button[data-path="clip.mp4"]'))
        driver.find_element(By.CSS_SELECTOR, '#queue button[data-path="clip.mp4"]').click()
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-frame") == "0")
        driver.execute_script('const s = document.getElementById("scrub"); s.value = 40;'
                              's.dispatchEvent(new Event("input"));')
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-frame") == "40")
        driver.find_element(By.ID, "from").send_keys("0")
        driver.find_element(By.ID, "to").send_keys("74")
        canvas = driver.find_element(By.ID, "canvas")
        w, h = canvas.size["width"], canvas.size["height"]
        assert (w, h) == (640, 360)
        # Drag from (200, 60) to (330, 200) in the frame's pixels; offsets count from the centre.
        ActionChains(driver).move_to_element_with_offset(canvas, 200 - w // 2, 60 - h // 2).click_and_hold() \
            .move_to_element_with_offset(canvas, 330 - w // 2, 200 - h // 2).release().perform()
        wait.until(lambda d: d.find_element(By.ID, "status").text == "saved")
        doc = json.loads((out / "_anon_ray" / "review" / "overrides" / "clip.mp4.json").read_text())
        (x1, y1, x2, y2), = [a["box"] for a in doc["add"]]
        assert abs(x1 - 200) <= 2 and abs(y1 - 60) <= 2 and abs(x2 - 330) <= 2 and abs(y2 - 200) <= 2
        assert doc["add"][0]["frames"] == [0, 74]
        driver.find_element(By.ID, "approve").click()
        wait.until(lambda d: d.find_element(By.ID, "status").text == "re-rendered")
        label = driver.execute_script('return document.querySelector(\'#queue button[data-path="clip.mp4"]\').textContent')
        assert "(reviewed)" in label
        assert driver.find_element(By.ID, "count").text == "1 of 1 shown, 1 reviewed"
        assert not driver.find_element(By.ID, "more").is_displayed()
    finally:
        driver.quit()
    after = _frames(out / "clip.mp4")
    assert hashlib.sha256((out / "clip.mp4").read_bytes()).digest() != hashlib.sha256(before_bytes).digest()
    for i in (0, 40, 74):
        inside = np.abs(after[i][65:195, 205:325].astype(float) - before[i][65:195, 205:325]).mean()
        outside = np.abs(after[i][250:, 400:].astype(float) - before[i][250:, 400:]).mean()
        assert inside > 8 and outside < 4, (i, inside, outside)  # re-encoding moves the rest a little


def test_the_queue_reads_the_manifest_again_only_when_its_files_change(tmp_path, monkeypatch):
    """Every request lists the manifest's files (after ROWS_TTL_S), but the rows, seconds of reading
    for a large archive, are read again only when a run has added a file of rows."""
    from anon_ray.io import manifest
    from anon_ray.types import Asset, AssetResult

    out = tmp_path / "out"
    cfg = AppConfig(input=str(tmp_path / "in"), output=str(out))

    def run(run_id: str, relpath: str, flush_only: bool = False) -> None:
        asset = Asset(uri=f"in/{relpath}", relpath=relpath, size=1, version="v1", kind="image")
        writer = manifest.ManifestWriter(str(out), run_id, cfg.storage)
        writer.add(job.record(run_id, AssetResult(asset, str(out / relpath), frames=1), "c1", "{}"))
        writer.flush() if flush_only else writer.close()

    run("r1", "a.jpg")
    scans = []
    scan = review_server.scan_manifest
    monkeypatch.setattr(review_server, "scan_manifest", lambda *a, **k: (scans.append(1), scan(*a, **k))[1])
    monkeypatch.setattr(review_server, "ROWS_TTL_S", 0.0)
    api = review_server.Review(cfg)
    assert [a["relpath"] for a in api.queue()["items"]] == ["a.jpg"] and len(scans) == 1
    assert [a["relpath"] for a in api.queue()["items"]] == ["a.jpg"] and len(scans) == 1
    run("r2", "b.jpg", flush_only=True)  # a run going on: a chunk of rows
    assert [a["relpath"] for a in api.queue()["items"]] == ["a.jpg", "b.jpg"] and len(scans) == 2
    assert [a["relpath"] for a in api.queue()["items"]] == ["a.jpg", "b.jpg"] and len(scans) == 2


def test_the_queue_comes_in_pages_riskiest_first(tmp_path, monkeypatch):
    """An archive's queue is paged: outputs riskiest first (then by name), each page `limit` long,
    with the total and the reviewed count; an asset on a later page is found all the same. The
    page lists one page and appends the next at "more"."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from anon_ray.io import manifest
    from anon_ray.types import Asset, AssetResult

    out = tmp_path / "out"
    cfg = AppConfig(input=str(tmp_path / "in"), output=str(out))
    writer = manifest.ManifestWriter(str(out), "r1", cfg.storage)
    for name, risk, approved in [("a.jpg", 0.0, False), ("b.jpg", 2.0, True), ("c.jpg", 1.0, False),
                                 ("d.jpg", 2.0, False), ("e.jpg", 0.5, False)]:
        asset = Asset(uri=f"in/{name}", relpath=name, size=1, version="v1", kind="image")
        row = job.record("r1", AssetResult(asset, str(out / name), frames=1), "c1", "{}")
        writer.add(replace(row, risk=risk, overrides_sha256="ab" * 32 if approved else ""))
    writer.close()
    api = review_server.Review(cfg)
    pages = [api.queue(offset, 2) for offset in (0, 2, 4, 6)]
    order = ["b.jpg", "d.jpg", "c.jpg", "e.jpg", "a.jpg"]
    assert [[a["relpath"] for a in p["items"]] for p in pages] == [order[:2], order[2:4], order[4:], []]
    assert {(p["total"], p["reviewed"]) for p in pages} == {(5, 1)}
    assert [a["reviewed"] for a in pages[0]["items"]] == [True, False]
    assert api.overrides("a.jpg") == review_server.EMPTY and api.save("a.jpg", review_server.EMPTY) is None
    with pytest.raises(KeyError):
        api.save("f.jpg", review_server.EMPTY)

    monkeypatch.setattr(review_server, "QUEUE_PAGE", 2)
    server = review_server.serve(replace(cfg, review=ReviewConfig(port=0)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    driver = _browser(tmp_path)
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(f"http://127.0.0.1:{server.server_address[1]}/")
        for n in (2, 4, 5):
            if n > 2:
                driver.find_element(By.ID, "more").click()
            wait.until(lambda d: [b.get_attribute("data-path")
                                  for b in d.find_elements(By.CSS_SELECTOR, "#queue button")] == order[:n])
            assert driver.find_element(By.ID, "count").text == f"{n} of 5 shown, 1 reviewed"
        assert not driver.find_element(By.ID, "more").is_displayed()
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
