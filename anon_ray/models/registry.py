"""The model manifest at run time: which verified file to load for a model name.

Every weight the job loads is either a manifest entry (wheel -> file -> preparation, each step
hash-checked) or a user override (local path or s3:// URI) whose hash is recorded. A hash that
disagrees with the manifest is an error, never a reason to load something else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from anon_ray.config import ModelsConfig, StorageConfig
from anon_ray.io.files import sha256_file
from anon_ray.io.scratch import ScratchCache
from anon_ray.io.uri import parse_uri

REPO_ROOT = Path(__file__).resolve().parents[2]
# The preparations build.py knows; a manifest naming another is refused when read, at run time too.
PREPARATION_NAMES = ("none", "centerface_dynamic", "platedet_boxes", "centerface_int8", "centerface_int8_7bit",
                     "yolov8_detect_onnx", "yolov8_detect_int8", "ssd_tf_onnx", "yunet_dynamic")


class ModelError(RuntimeError):
    """A model is missing, cannot be fetched, or does not hash to what the manifest pins."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    task: str
    path: str  # local file to load
    sha256: str  # of the file at `path`
    source_sha256: str  # of the file it was prepared from (equal to sha256 when not prepared)
    license: str


def repo_path(path: str | os.PathLike) -> Path:
    """Config paths are relative to the repository root, so they do not depend on the cwd.

    An installed wheel has no checkout around it (site-packages holds no pyproject.toml); there,
    relative paths are taken from the cwd (e.g. the image's WORKDIR holding models/).
    """
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    return (REPO_ROOT if (REPO_ROOT / "pyproject.toml").is_file() else Path.cwd()) / p


def load_manifest(cfg: ModelsConfig) -> dict[str, dict]:
    path = repo_path(cfg.manifest)
    try:
        models = yaml.safe_load(path.read_text())["models"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as e:
        raise ModelError(f"cannot read model manifest {path}: {e}") from e
    required = {"task", "wheel", "wheel_sha256", "path_in_wheel", "sha256", "license", "prepare", "prepared_sha256"}
    for name, entry in models.items():
        missing = required - set(entry)
        if missing:
            raise ModelError(f"manifest {path}: model {name!r} lacks {sorted(missing)}")
        if entry["prepare"] not in PREPARATION_NAMES:
            raise ModelError(f"manifest {path}: model {name!r} names unknown preparation {entry['prepare']!r}")
    return models


def expected_sha256(entry: dict) -> str | None:
    """Hash the cached file must have; None when a preparation's output is not pinned yet."""
    return entry["sha256"] if entry["prepare"] == "none" else entry["prepared_sha256"]


def cache_file(name: str, entry: dict, cfg: ModelsConfig) -> Path:
    # The preparation is part of the name so switching it never reuses a stale file.
    suffix = "" if entry["prepare"] == "none" else f".{entry['prepare']}"
    return repo_path(cfg.cache_dir) / f"{name}{suffix}.onnx"


def check_hash(what: str, actual: str, expected: str | None) -> None:
    if expected is not None and actual != expected:
        raise ModelError(f"{what}: sha256 {actual} does not match the manifest's {expected}")


def download_s3(uri: str, cfg: ModelsConfig) -> Path:
    """Download once per object version: the node-local cache is keyed by ETag, so a replaced
    object is refetched. Endpoint and credentials come from the environment (AWS_ENDPOINT_URL, ...)."""
    _, bucket, key = parse_uri(uri)
    if not bucket or not key:
        raise ModelError(f"malformed S3 model URI {uri!r}")
    cache = ScratchCache(str(repo_path(cfg.cache_dir) / "s3"), max_bytes=1 << 62)  # models are never evicted
    try:
        return Path(cache.fetch(uri, "", StorageConfig()))
    except Exception as e:  # noqa: BLE001 - whatever the store said, the model cannot be loaded
        raise ModelError(f"cannot download model {uri}: {e}") from e


def resolve(name: str, cfg: ModelsConfig) -> ModelInfo:
    """The file to load for `name`: a user override (hashed and recorded) or the verified cache file.

    Relative override paths are taken from the current directory, as a user typing them expects.
    """
    manifest = load_manifest(cfg)
    entry = manifest.get(name)
    override = cfg.paths.get(name)
    if override:
        path = download_s3(override, cfg) if override.startswith("s3://") else Path(override).expanduser().resolve()
        if not path.is_file():
            raise ModelError(f"model {name!r}: override {override} is not a file")
        digest = sha256_file(path)
        return ModelInfo(name, entry["task"] if entry else "", str(path), digest, digest, "user-supplied")
    if entry is None:
        raise ModelError(f"model {name!r} is neither in the manifest {cfg.manifest} nor in models.paths")
    path = cache_file(name, entry, cfg)
    if not path.is_file():
        raise ModelError(f"model {name!r}: {path} is missing; run `anon-ray-models fetch` first")
    digest = sha256_file(path)
    check_hash(str(path), digest, expected_sha256(entry))
    return ModelInfo(name, entry["task"], str(path), digest, entry["sha256"], entry["license"])


