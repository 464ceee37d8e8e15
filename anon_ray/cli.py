"""The only module that imports Hydra: compose the config, then call plain Python.

`anon-ray`, `anon-ray-eval` and `anon-ray-bench` share conf/ and its groups.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from .config import AppConfig, BenchConfig, EvalConfig

CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
_exit_code = 0


def _register() -> None:
    store = ConfigStore.instance()
    store.store(name="app_schema", node=AppConfig)
    store.store(name="eval_schema", node=EvalConfig)
    store.store(name="bench_schema", node=BenchConfig)


def _to_plain(dcfg: DictConfig):
    cfg = OmegaConf.to_object(dcfg)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr, force=True)
    # Workers may run elsewhere (other cwd, other node): local paths travel absolute.
    paths = {k: os.path.abspath(v) for k in ("input", "output") if (v := getattr(cfg, k)) and "://" not in v}
    return dataclasses.replace(cfg, **paths)


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _run(dcfg: DictConfig) -> None:
    from . import job, ray_job

    global _exit_code
    cfg = _to_plain(dcfg)
    summary = job.run(cfg, ray_job.run_assets)
    print(f"anon-ray: {summary.ok} ok, {summary.failed} failed, {summary.skipped} skipped, "
          f"{summary.frames} frames in {summary.seconds:.1f}s", file=sys.stderr)
    for relpath, error_class, error in summary.failures:
        print(f"  failed: {relpath}: {error_class}: {error}", file=sys.stderr)
    if not cfg.dry_run:
        print(f"outputs: {cfg.output}\nmanifest: {os.path.join(cfg.output, '_anon_ray', 'manifest.parquet')}")
    _exit_code = summary.exit_code


@hydra.main(config_path=CONF_DIR, config_name="eval", version_base="1.3")
def _eval(dcfg: DictConfig) -> None:
    from . import evaluate

    evaluate.main(_to_plain(dcfg))


@hydra.main(config_path=CONF_DIR, config_name="bench", version_base="1.3")
def _bench(dcfg: DictConfig) -> None:
    from . import bench

    bench.main(_to_plain(dcfg))


def run_main() -> None:
    _register()
    _run()
    sys.exit(_exit_code)


def eval_main() -> None:
    _register()
    _eval()


def bench_main() -> None:
    _register()
    _bench()
