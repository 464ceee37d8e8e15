"""anon-ray-rerender: apply reviewers' overrides files to finished assets, without detectors.

For every asset with an overrides file (io/review.py) the stored boxes of the job's last run are
corrected (core/overrides.py) and the asset is rendered again from its input (run/render.py);
its manifest row records the overrides file's sha256. An asset whose latest successful row
already has that hash for the same input is skipped, so running it again writes nothing (I4).
An asset cannot be re-rendered, and fails with a row saying why, when its boxes file is missing
(the job ran without `review.boxes=true`), its input changed since, or the overrides name
another run's boxes. An overrides file with `"exclude": true` removes the asset's output.
A re-render that fails, refused before rendering or failing in it, removes the asset's output
too: the overrides say the job's output is wrong, so it must not stay published as if corrected.
A job run that would process a corrected asset again renders it the same way (run/job.py).
"""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

import pyarrow as pa
import pyarrow.compute as pc

from anon_ray.config import AppConfig
from anon_ray.core import overrides as ov_
from anon_ray.io import inventory, manifest, review, storage
from anon_ray.run import job, render


def _done(cfg: AppConfig, relpaths: list[str]) -> dict[str, tuple[str, str]]:
    """relpath -> (input_version, overrides_sha256) when its latest row that changed its output
    rendered or excluded it; one that failed (its output removed) leaves it to render again. A job's
    rows for assets it found done change nothing and are passed over."""
    columns = ["relpath", "status", "error_class", "input_version", "overrides_sha256"]
    wanted = pa.array(relpaths, pa.string())

    def kept(page: pa.Table) -> pa.Table:
        changed = pc.or_kleene(pc.not_equal(page["status"], "skipped"), pc.equal(page["error_class"], job.EXCLUDED))
        return page.filter(pc.and_(changed, pc.is_in(page["relpath"], value_set=wanted)))

    rows = manifest.read_manifest(cfg.output, cfg.storage, columns, where=kept)  # not every row of every run
    finished = pc.or_kleene(pc.equal(rows["status"], "ok"), pc.equal(rows["error_class"], job.EXCLUDED)).to_pylist()
    latest = {r: (f, v, o or "") for r, v, o, f in
              zip(*(rows[c].to_pylist() for c in ("relpath", "input_version", "overrides_sha256")), finished)}
    return {r: (v, o) for r, (f, v, o) in latest.items() if f}


def rerender(cfg: AppConfig, out: TextIO | None = None, only: set[str] | None = None) -> job.Summary:
    """Every asset with an overrides file (`only`: those of these relpaths)."""
    out = out or sys.stderr
    wanted = [r for r in review.listed_overrides(cfg.output, cfg.storage) if only is None or r in only]
    summary = job.Summary(fail_on_unsupported=False)
    if not wanted:
        print(f"anon-ray-rerender: no overrides files under {cfg.output}", file=out)
        return summary
    done = _done(cfg, wanted)
    run_id = manifest.new_run_id()
    models = job.model_hashes(cfg)
    chash, models_json = manifest.config_hash(cfg, models), json.dumps(models, sort_keys=True)
    manifest.write_run_config(cfg, run_id, chash, models)
    writer = manifest.ManifestWriter(cfg.output, run_id, cfg.storage)
    started, left = time.time(), set(wanted)
    try:
        for asset in storage.list_assets(cfg.input, cfg.storage, exclude=cfg.output):
            if asset.relpath not in left:
                continue
            left.discard(asset.relpath)
            name = inventory.display_path(asset.relpath)
            data = storage.read_bytes(review.overrides_uri(cfg.output, asset.relpath), cfg.storage)
            digest = ov_.sha256(data)
            if done.get(asset.relpath) == (asset.version, digest):
                summary.skipped += 1
                continue
            res = render.reviewed(cfg, asset, data, digest)
            writer.add(job.record(run_id, res, chash, models_json, review_cfg=cfg.review))
            if res.failure:
                summary.failed += 1
                summary.failures.append((name, res.failure.error_class, res.failure.error))
                print(f"FAILED {name}: {res.failure.error_class}: {res.failure.error}", file=out)
            else:
                summary.ok += 1
                summary.frames += res.frames
                print(f"{'EXCLUDED' if res.asset.skip else 'RE-RENDERED'} {name}", file=out)
    finally:
        writer.close()
    for relpath in sorted(left):
        summary.failed += 1
        summary.failures.append((inventory.display_path(relpath), "NotFound", "no input of this name"))
        print(f"FAILED {inventory.display_path(relpath)}: an overrides file but no input of this name", file=out)
    summary.seconds = time.time() - started
    return summary
