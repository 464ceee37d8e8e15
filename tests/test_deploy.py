"""deploy/: the Kubernetes manifests parse, and everything they name exists in this repository.

No image is built here (no Docker engine); the checks tie each manifest to the Dockerfiles, the
package's entry points and config, and pyproject's pins, so a rename anywhere breaks a test.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import shlex
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from anon_ray.config import AppConfig

DEPLOY = REPO / "deploy"
CONF = REPO / "conf"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DOCKERFILES = {"cpu": DEPLOY / "Dockerfile", "cuda": DEPLOY / "Dockerfile.cuda"}
EXPECTED_KINDS = {
    "raycluster.yaml": [("ray.io/v1", "RayCluster")],
    "rayjob.yaml": [("ray.io/v1", "RayJob")],
    "cronjob.yaml": [("batch/v1", "CronJob")],
}
GPU = "nvidia.com/gpu"


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d is not None]


def _one(name: str) -> dict:
    (doc,) = _docs(name)
    return doc


def _walk(node, key: str) -> Iterator:
    """Every value stored under `key` anywhere in a parsed document."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from _walk(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item, key)


def _containers(doc: dict) -> list[dict]:
    return [c for lst in _walk(doc, "containers") for c in lst]


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, out = [], []
    for raw in dockerfile.read_text().splitlines():
        if raw.strip().startswith("#") or not raw.strip():
            continue
        lines.append(raw.rstrip())
        if not raw.rstrip().endswith("\\"):
            joined = " ".join(line.rstrip("\\").strip() for line in lines)
            op, _, args = joined.partition(" ")
            out.append((op.upper(), args.strip()))
            lines = []
    return out


def _built_tags(dockerfile: Path) -> set[str]:
    """Tags the Dockerfile's header documents (`docker build -f deploy/X -t TAG .`)."""
    name = dockerfile.relative_to(REPO).as_posix()
    return set(re.findall(rf"docker build -f {re.escape(name)} -t (\S+) \.", dockerfile.read_text()))


def _ray_clusters() -> list[dict]:
    return [_one("raycluster.yaml")["spec"], _one("rayjob.yaml")["spec"]["rayClusterSpec"]]


def _pin(requirements: list[str], name: str) -> str:
    (version,) = [r.split("==")[1] for r in requirements if re.match(rf"{re.escape(name)}(\[.*\])?==", r)]
    return version


# ---- config overrides named by entrypoints ----

def check_override(arg: str) -> None:
    """A Hydra override names a conf group option that exists, or a field of AppConfig."""
    key, sep, value = arg.lstrip("+~").partition("=")
    assert sep and key, f"not a key=value override: {arg!r}"
    path = key.split(".")
    if len(path) == 1 and (CONF / key).is_dir():
        assert (CONF / key / f"{value}.yaml").is_file(), f"{arg!r}: no conf/{key}/{value}.yaml"
        return
    node: type = AppConfig
    for depth, name in enumerate(path):
        hints = typing.get_type_hints(node)
        assert name in hints, f"{arg!r}: {node.__name__} has no field {name!r}"
        node = hints[name]
        if typing.get_origin(node) is dict:  # models.paths.<any name>
            return
        if not dataclasses.is_dataclass(node):
            assert depth == len(path) - 1, f"{arg!r}: {name!r} is a leaf"
            return


def check_command(argv: list[str]) -> None:
    """`python -m MODULE ARGS`: the module exists; for the job itself every argument is an override."""
    start = argv.index("python")
    assert argv[start + 1] == "-m", argv
    module, args = argv[start + 2], argv[start + 3:]
    assert importlib.util.find_spec(module) is not None, module
    if module == "anon_ray":
        assert importlib.util.find_spec("anon_ray.__main__") is not None
        assert args, "the job needs at least input= and output="
        for arg in args:
            check_override(arg)
        keys = {a.partition("=")[0] for a in args}
        assert {"input", "output"} <= keys, args


@pytest.mark.parametrize("arg", ["input=s3://b/in", "cluster=gpu", "cluster.address=auto", "segment=single",
                                 "models.paths.centerface=s3://m/c.onnx", "detect.face.threshold=0.4",
                                 "+storage.region=eu-west-1"])
def test_override_check_accepts(arg: str) -> None:
    check_override(arg)


@pytest.mark.parametrize("arg", ["cluster=tpu", "clusters.address=auto", "cluster.adress=auto",
                                 "cluster.address.x=1", "noequals"])
def test_override_check_rejects(arg: str) -> None:
    with pytest.raises(AssertionError):
        check_override(arg)


# ---- cron ----

_CRON_FIELDS = [(0, 59, {}), (0, 23, {}), (1, 31, {}),
                (1, 12, {m: i + 1 for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())}),
                (0, 7, {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())})]


def valid_cron(expr: str) -> bool:
    fields = expr.split()
    if len(fields) != 5:
        return False

    def value(token: str, lo: int, hi: int, names: dict[str, int]) -> int | None:
        v = names.get(token.upper(), int(token) if token.isdigit() else None)
        return v if v is not None and lo <= v <= hi else None

    for field, (lo, hi, names) in zip(fields, _CRON_FIELDS):
        for item in field.split(","):
            base, slash, step = item.partition("/")
            if slash and not (step.isdigit() and int(step) > 0):
                return False
            if base == "*":
                continue
            bounds = [value(t, lo, hi, names) for t in base.split("-")]
            if len(bounds) > 2 or None in bounds or bounds != sorted(bounds):
                return False
    return True


@pytest.mark.parametrize("expr,ok", [("0 2 * * *", True), ("*/15 1-5 1,15 JAN-MAR MON-FRI", True),
                                     ("0 24 * * *", False), ("0 2 * *", False), ("0 2 * * * *", False),
                                     ("5-1 * * * *", False), ("*/0 * * * *", False), ("@daily", False)])
def test_cron_validator(expr: str, ok: bool) -> None:
    assert valid_cron(expr) is ok


# ---- the manifests ----

def test_every_yaml_parses_with_expected_kinds() -> None:
    assert sorted(p.name for p in DEPLOY.glob("*.y*ml")) == sorted(EXPECTED_KINDS)
    for name, kinds in EXPECTED_KINDS.items():
        docs = _docs(name)
        assert [(d["apiVersion"], d["kind"]) for d in docs] == kinds, name
        assert all(d["metadata"].get("name") or d["metadata"].get("generateName") for d in docs)


def test_images_are_built_by_deploy_dockerfiles() -> None:
    tags = {kind: _built_tags(path) for kind, path in DOCKERFILES.items()}
    assert all(len(t) == 1 for t in tags.values()), tags
    (cpu,), (cuda,) = tags["cpu"], tags["cuda"]
    readme = (DEPLOY / "README.md").read_text()
    assert cpu in readme and cuda in readme
    for name in EXPECTED_KINDS:
        for doc in _docs(name):
            for c in _containers(doc):
                gpu = GPU in c["resources"].get("limits", {})
                assert c["image"] == (cuda if gpu else cpu), f"{name}: {c['name']} runs {c['image']}"


def test_ray_clusters_gpu_group_resources_and_autoscaling() -> None:
    ray_pin = _pin(PYPROJECT["project"]["dependencies"], "ray")
    for spec in _ray_clusters():
        assert spec["rayVersion"] == ray_pin
        assert spec["enableInTreeAutoscaling"] is True
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert 8265 in [p["containerPort"] for p in head["ports"]]
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
        assert {"cpu", "gpu"} <= set(groups)
        for g in groups.values():
            assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"]
            assert g["maxReplicas"] > 0
        gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]
        assert int(gpu["limits"][GPU]) >= 1
        assert not any(GPU in c["resources"].get("limits", {})
                       for c in groups["cpu"]["template"]["spec"]["containers"])


def test_every_container_sets_cpu_and_memory() -> None:
    for name in EXPECTED_KINDS:
        for doc in _docs(name):
            for c in _containers(doc):
                for side in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(c["resources"][side]), f"{name}: {c['name']} {side}"


def test_entrypoints_name_existing_modules_and_config() -> None:
    rayjob = _one("rayjob.yaml")["spec"]
    assert rayjob["shutdownAfterJobFinishes"] is True
    check_command(shlex.split(rayjob["entrypoint"]))
    (submit,) = _containers(_one("cronjob.yaml"))
    command = submit["command"]
    assert command[:3] == ["ray", "job", "submit"]
    check_command(command[command.index("--") + 1:])
    readme = (DEPLOY / "README.md").read_text()
    commands = re.findall(r"python -m anon_ray[^`\n]*", readme)
    assert any("--working-dir ." in line and "ray job submit --address http://HEAD:8265" in line
               for line in readme.splitlines())
    assert len(commands) >= 3
    for cmd in commands:
        check_command(shlex.split(cmd))


def test_cronjob_schedule_and_target() -> None:
    cron = _one("cronjob.yaml")
    assert valid_cron(cron["spec"]["schedule"])
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    (submit,) = _containers(cron)
    (address,) = [a.split("=", 1)[1] for a in submit["command"] if a.startswith("--address=")]
    # KubeRay names the head's service <RayCluster name>-head-svc.
    cluster = _one("raycluster.yaml")["metadata"]["name"]
    assert address == f"http://{cluster}-head-svc:8265"


def test_no_literal_credentials() -> None:
    for path in DEPLOY.iterdir():
        text = path.read_text()
        assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), path
        assert not re.search(r"(?i)aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{20,}", text), path
    for name in EXPECTED_KINDS:
        for doc in _docs(name):
            assert doc["kind"] != "Secret"
            for env in _walk(doc, "env"):
                for var in env:
                    if var["name"].startswith("AWS_"):
                        assert "value" not in var and "secretKeyRef" in var["valueFrom"], f"{name}: {var['name']}"


# ---- the Dockerfiles ----

@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_copies_exist_and_pass_the_ignore_file(kind: str) -> None:
    path = DOCKERFILES[kind]
    allowed = {line[1:].strip() for line in path.with_name(path.name + ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    copies = [args.split() for op, args in _instructions(path) if op == "COPY"]
    assert copies
    for args in copies:
        assert not any(a.startswith("--from") for a in args)
        for src in [a for a in args if not a.startswith("--")][:-1]:
            assert (REPO / src).exists(), f"{path.name}: COPY {src} is not in the repository"
            assert src in allowed, f"{path.name}: {src} is excluded from the build context"


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_installs_fetches_and_enters(kind: str) -> None:
    ops = _instructions(DOCKERFILES[kind])
    runs = " ".join(args for op, args in ops if op == "RUN")
    assert "pip install -e ." in runs or "pip install -e '.[gpu]'" in runs
    assert "python -m anon_ray.models fetch" in runs
    assert importlib.util.find_spec("anon_ray.models") is not None
    (entry,) = [args for op, args in ops if op == "ENTRYPOINT"]
    (script,) = yaml.safe_load(entry)  # the JSON (exec) form
    assert script in PYPROJECT["project"]["scripts"]


def test_dockerfile_bases() -> None:
    cpu = _instructions(DOCKERFILES["cpu"])
    assert ("FROM", "python:3.11-slim") in cpu
    cuda = _instructions(DOCKERFILES["cuda"])
    (base,) = [args.split("=", 1)[1] for op, args in cuda if op == "ARG" and args.startswith("CUDA_BASE=")]
    assert base.startswith("nvidia/cuda:") and "cudnn" in base and "runtime" in base
    runs = " ".join(args for op, args in cuda if op == "RUN")
    assert "python3.11" in runs
    # The GPU build replaces the CPU one at the version pyproject's `gpu` extra pins.
    gpu_pin = _pin(PYPROJECT["project"]["optional-dependencies"]["gpu"], "onnxruntime-gpu")
    assert "pip uninstall -y onnxruntime" in runs and f"onnxruntime-gpu=={gpu_pin}" in runs
