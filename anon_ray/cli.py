"""The only module that imports Hydra: compose the config, then call plain Python.

`anon-ray`, `anon-ray-rerender`, `anon-ray-review`, `anon-ray-eval` and `anon-ray-bench` share conf/ and its groups.

Logging goes to stderr at INFO; `hydra.verbose=true` turns on DEBUG for our code and Ray's
(`hydra.verbose=[botocore]` and the like for a named library: the AWS SDK's DEBUG lines carry
request headers, so they stay off unless asked for by name). Every line goes through a redacting
formatter that masks credential values from the environment and signed-request fields.

SIGTERM or SIGINT during `anon-ray` stops it gracefully (job.StopRequest): no new asset is taken,
assets in flight get ANON_RAY_STOP_GRACE_S seconds (default 20) to finish and are then cancelled
(a second signal cancels at once), the manifest keeps every finished asset's row, and the exit
status is 128 + the signal number (143, 130). Running the same command again finishes the job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import re
import signal
import sys
from collections.abc import Iterator

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from anon_ray.config import AppConfig, BenchConfig, EvalConfig

CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
_exit_code = 0
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DEFAULT_STOP_GRACE_S = 20.0  # under Kubernetes' default 30 s between SIGTERM and SIGKILL
# DEBUG output of these carries request headers (signed Authorization, session tokens) and bodies.
_WIRE_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")
# Environment variables whose values must never appear in a log line.
_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|ACCESS_KEY|PRIVATE|AUTH", re.I)
_SECRET_FIELDS = [  # signed-request fields, whatever their values
    (re.compile(r"(?i)(x-amz-security-token['\"]?\s*[:=]\s*b?['\"]?)[^'\"\s,}&]+"), r"\1***"),
    (re.compile(r"(?i)(x-amz-credential=|credential=)[^,\s'\"&]+"), r"\1***"),
    (re.compile(r"(?i)(x-amz-signature=|signature=)[0-9a-f]+"), r"\1***"),
    (re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*b?['\"]?)[^'\"]+"), r"\1***"),
]


def _register() -> None:
    store = ConfigStore.instance()
    store.store(name="app_schema", node=AppConfig)
    store.store(name="eval_schema", node=EvalConfig)
    store.store(name="bench_schema", node=BenchConfig)


class RedactingFormatter(logging.Formatter):
    """Formats as usual, then masks secrets: values of credential-like environment variables
    (AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, ...) and signed-request fields."""

    def __init__(self, fmt: str, environ: dict[str, str] | None = None) -> None:
        super().__init__(fmt)
        env = os.environ if environ is None else environ
        values = {v for k, v in env.items() if (_SECRET_NAME.search(k) or k == "AWS_ACCESS_KEY_ID") and len(v) >= 8}
        # Longest first, so a value that contains another is masked whole.
        self.values = sorted(values, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, "***")
        for pattern, repl in _SECRET_FIELDS:
            text = pattern.sub(repl, text)
        return text

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


def _verbose() -> bool | str | list[str]:
    with contextlib.suppress(Exception):  # no Hydra context (called from plain Python)
        verbose = HydraConfig.get().verbose
        return list(verbose) if OmegaConf.is_list(verbose) else verbose
    return False


def setup_logging(verbose: bool | str | list[str] = False) -> None:
    """stderr, INFO (DEBUG with `verbose`: True for everything but the wire loggers, or names)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(LOG_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    names = [verbose] if isinstance(verbose, str) else verbose if isinstance(verbose, list) else []
    root.setLevel(logging.DEBUG if verbose is True or "root" in names else logging.INFO)
    for name in _WIRE_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if name in names else logging.INFO)
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)


def _to_plain(dcfg: DictConfig):
    cfg = OmegaConf.to_object(dcfg)
    setup_logging(_verbose())
    logging.getLogger("anon_ray").debug("config:\n%s", OmegaConf.to_yaml(dcfg, resolve=True))
    # Workers may run elsewhere (other cwd, other node): local paths travel absolute.
    paths = {k: os.path.abspath(v) for k in ("input", "output") if (v := getattr(cfg, k)) and "://" not in v}
    return dataclasses.replace(cfg, **paths)


def stop_grace_s() -> float:
    value = os.environ.get("ANON_RAY_STOP_GRACE_S", "")
    try:
        return max(0.0, float(value)) if value else DEFAULT_STOP_GRACE_S
    except ValueError:
        raise SystemExit(f"ANON_RAY_STOP_GRACE_S must be a number of seconds, not {value!r}") from None


@contextlib.contextmanager
def graceful_stop(stop) -> Iterator[None]:
    """SIGTERM and SIGINT set `stop` (a job.StopRequest) instead of killing the process."""

    def handler(signum: int, _frame) -> None:
        stop.request(signum)
        if stop.count == 1:
            msg = (f"anon-ray: {stop.name} received: taking no new assets; those in flight get "
                   f"{stop.grace_s:g} s to finish, then are cancelled (send it again to cancel now)\n")
        else:
            msg = f"anon-ray: {signal.Signals(signum).name} again: cancelling the assets in flight\n"
        # os.write, not print: the handler may interrupt a print to the same stream.
        with contextlib.suppress(OSError):
            os.write(2, msg.encode())

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _run(dcfg: DictConfig) -> None:
    from anon_ray.run import engine, job

    global _exit_code
    cfg = _to_plain(dcfg)
    stop = job.StopRequest(grace_s=stop_grace_s())
    with graceful_stop(stop):
        summary = job.run(cfg, functools.partial(engine.run_assets, stop=stop), stop=stop)
    reasons = ", ".join(f"{n} {why}" for why, n in sorted(summary.not_processed.items()))
    print(f"anon-ray: {summary.ok} ok, {summary.failed} failed, {summary.skipped} skipped (done before), "
          f"{sum(summary.not_processed.values())} not processed{f' ({reasons})' if reasons else ''}, "
          f"{summary.frames} frames in {summary.seconds:.1f}s", file=sys.stderr)
    if summary.unsupported and summary.fail_on_unsupported:
        print(f"anon-ray: {summary.unsupported} files of media were not masked (rows with status 'skipped' "
              f"in the manifest say why); exit status 1 (fail_on_unsupported=false: 0)", file=sys.stderr)
    for relpath, error_class, error in summary.failures:
        print(f"  failed: {relpath}: {error_class}: {error}", file=sys.stderr)
    if summary.stopped_by:
        in_flight = (f"{summary.interrupted} assets in flight were cancelled (no output, error class "
                     f"{job.INTERRUPTED})" if summary.interrupted else "the assets in flight finished")
        print(f"anon-ray: stopped by {signal.Signals(summary.stopped_by).name} before the job was done: "
              f"{in_flight}, and the rest of the input was not started. Finished assets keep their outputs "
              f"and manifest rows; run the same command again to process what is left.", file=sys.stderr)
    if not cfg.dry_run:
        print(f"outputs: {cfg.output}\nmanifest: {os.path.join(cfg.output, '_anon_ray', 'manifest')} (a file per run)")
    _exit_code = summary.exit_code


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _rerender(dcfg: DictConfig) -> None:
    from anon_ray.run import rerender

    global _exit_code
    summary = rerender.rerender(_to_plain(dcfg))
    print(f"anon-ray-rerender: {summary.ok} re-rendered or excluded, {summary.failed} failed, {summary.skipped} "
          f"unchanged since their last re-render, {summary.frames} frames in {summary.seconds:.1f}s", file=sys.stderr)
    _exit_code = summary.exit_code


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _review(dcfg: DictConfig) -> None:
    from anon_ray.tools import review_server

    server = review_server.serve(_to_plain(dcfg))
    host, port = server.server_address[:2]
    print(f"anon-ray-review: http://{host}:{port}/ (Ctrl-C to stop)", file=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    server.server_close()


@hydra.main(config_path=CONF_DIR, config_name="eval", version_base="1.3")
def _eval(dcfg: DictConfig) -> None:
    from anon_ray.tools import evaluate

    evaluate.main(_to_plain(dcfg))


def job_overrides(overrides: list[str]) -> list[str]:
    """Of anon-ray-bench's command-line overrides, those that set the job (groups, presets, job
    keys), not the benchmark's own keys or its input and output: what anon-ray is run with."""
    own = {f.name for f in dataclasses.fields(BenchConfig)} - {f.name for f in dataclasses.fields(AppConfig)}
    own |= {"input", "output"}
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~").split(".", 1)[0] not in own]


@hydra.main(config_path=CONF_DIR, config_name="bench", version_base="1.3")
def _bench(dcfg: DictConfig) -> None:
    from anon_ray.tools import bench

    bench.main(_to_plain(dcfg), job_overrides(list(HydraConfig.get().overrides.task)))


def run_main() -> None:
    _register()
    _run()
    sys.exit(_exit_code)


def rerender_main() -> None:
    _register()
    _rerender()
    sys.exit(_exit_code)


def review_main() -> None:
    _register()
    _review()


def eval_main() -> None:
    _register()
    _eval()


def bench_main() -> None:
    _register()
    _bench()
