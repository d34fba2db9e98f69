"""Merge a trained adapter into its base, check that nothing changed, and keep the merged model or not.

    python -m peftlab.merge --spec results/default/specs/merge_run/<run_id>.json \
        --adapter results/default/runs/<run_id>/adapter \
        --merged results/default/runs/<run_id>/merged --check results/default/runs/<run_id>/merge_check.json

The run's `outputs.merge` says what to keep:
- `save`: merged/ holds the merged model (`merge_and_unload`, a plain transformers
  model) in the model's dtype, with its tokenizer;
- `check`: the same merge, save, reload and comparison, then the copy is deleted:
  merge_check.json proves the merge exact, and merged/ holds only NOT_SAVED.txt. The
  default for large models: a merged float32 copy of a 7B base is 30 GB per run;
- `none`: nothing is loaded; merge_check.json and merged/NOT_SAVED.txt say so;
- `auto` (the default): `save` below `spec.AUTO_SAVE_BELOW` parameters, `check` from there.

The check, in two parts: (1) the merge itself, in float32 (QLoRA's and a bfloat16
model's too): the merged model's logits against the adapter model's, on a fixed batch
of training examples (the evaluation split is evaluate's alone), within `numerics.MERGE_ULPS` float32 epsilons of the
logits' scale;
(2) the copy written to disk, reloaded in float32, against the merged model with its
weights rounded to the saved dtype, within `numerics.RELOAD_ULPS` (the same weights: it
catches weights that the architecture's config cannot hold and so silently drop on load). A NaN fails both, and
a failed check leaves no merged/. An adapter model whose own logits are not finite fails
before merging, with a message that says so.

Methods that cannot merge (prompt learning, bottleneck adapters) record why instead
of failing. `full` fine-tuning is a plain model already: adapter/ holds it, so merged/
holds only SAME_AS_ADAPTER.txt and the model is not stored twice.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import datasets
import torch

from peftlab import artifacts, cli, methods, numerics
from peftlab.compute import logits
from peftlab.models import DTYPES, RUN_FILE, load_model, load_tokenizer, load_trained, probe_batch, trained_spec
from peftlab.spec import RunSpec

log = logging.getLogger(__name__)


class MergeMismatch(RuntimeError):
    """The merged model does not reproduce the adapter model."""


MODES = ("auto", "save", "check", "none")  # outputs.merge
NOT_SAVED, SAME_AS_ADAPTER = "NOT_SAVED.txt", "SAME_AS_ADAPTER.txt"


def merge(spec: RunSpec, adapter: str, merged: Path) -> dict:
    """Merge, check and keep per `spec.outputs.merge`; the merge_check.json record.

    The training settings are the adapter's own (models.trained_spec), and so is the record's spec.
    """
    spec = trained_spec(spec, adapter, "merge_run")
    prov = artifacts.Provenance(spec.to_dict())
    method, mode = methods.get(spec.peft.type), spec.outputs.merge
    record = {
        "run_id": spec.run_id,
        "trained_fingerprint": artifacts.read_json(Path(adapter) / RUN_FILE)["fingerprint"],
        "merge": mode,
    }
    with artifacts.atomic_dir(merged) as tmp:
        if not method.mergeable:
            (tmp / "NOT_MERGED.txt").write_text(method.not_mergeable_reason + "\n")
            return {
                **record,
                "mergeable": False,
                "reason": method.not_mergeable_reason,
                "merged_bytes": 0,
                **prov.record(),
            }
        if mode == "none":
            (tmp / NOT_SAVED).write_text("outputs.merge: none: this run was not merged\n")
            return {**record, "mergeable": True, "checked": False, "saved": False, "merged_bytes": 0, **prov.record()}
        if method.impl is None:  # full fine-tuning: adapter/ is the merged model
            (tmp / SAME_AS_ADAPTER).write_text("full fine-tuning: adapter/ holds the whole trained model\n")
            return {
                **record,
                "mergeable": True,
                "checked": False,
                "saved": True,
                "dtype": spec.model.dtype,
                "merged_bytes": 0,
                **prov.record(),
            }
        checked = _merge_and_check(spec, method, adapter, tmp / "model")
        keep = spec.outputs.keeps_merged(checked["params"])
        if keep:
            for f in (tmp / "model").iterdir():
                f.rename(tmp / f.name)
            (tmp / "model").rmdir()
        else:
            shutil.rmtree(tmp / "model")
            (tmp / NOT_SAVED).write_text(
                f"outputs.merge: {mode}: the merge was checked exact (merge_check.json) and its copy deleted\n"
            )
        size = artifacts.disk_bytes(tmp)
    return {
        **record,
        **checked,
        "mergeable": True,
        "checked": True,
        "saved": keep,
        "merged_bytes": size if keep else 0,
        **prov.record(),
    }


def _merge_and_check(spec: RunSpec, method, adapter: str, out: Path) -> dict:
    """Merge in float32, compare with the adapter model, save in the model's dtype to `out`, reload and compare; raise
    MergeMismatch."""
    tokenizer = load_tokenizer(spec.model)
    model = load_trained(spec, adapter, tokenizer, float32=True)
    probe = probe_batch(
        datasets.load_from_disk(str(Path(spec.data_dir) / "train")), tokenizer, spec.task
    )  # the evaluation split is evaluate's alone
    before = logits(model, probe)
    if not numerics.finite(before):
        raise MergeMismatch(
            f"{spec.run_id}: the adapter model itself gives non-finite logits on the probe batch: the adapter "
            "is broken "
            "(did training diverge?), so there is nothing sound to merge"
        )
    tol = numerics.tolerance(before, numerics.MERGE_ULPS)
    plain = model.merge_and_unload()
    if fix := methods.hook(method, "after_merge"):
        fix(plain)
    diff = numerics.max_abs_diff(logits(plain, probe), before)
    if not numerics.within(diff, tol):
        raise MergeMismatch(
            f"{spec.run_id}: the merged model differs from the adapter model by {diff:.3g} > {tol:.3g} "
            f"(the adapter model's largest |logit| is {before.abs().max().item():.3g})"
        )
    params, saved = plain.num_parameters(), DTYPES[spec.model.dtype]
    with torch.no_grad():  # the weights as the saved dtype holds them, computed with in float32 as the reload below is
        for p in plain.parameters():
            p.data = p.data.to(saved).float()
    expected = logits(plain, probe)
    plain.to(saved).save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model, plain
    reloaded = load_model(spec.model, spec.task, tokenizer, path=str(out), float32=True)
    reload_diff = numerics.max_abs_diff(logits(reloaded, probe), expected)
    reload_tol = numerics.tolerance(expected, numerics.RELOAD_ULPS)
    if not numerics.within(reload_diff, reload_tol):
        raise MergeMismatch(
            f"{spec.run_id}: the merged model, reloaded, differs from the merged model in memory by "
            f"{reload_diff:.3g} > {reload_tol:.3g}: "
            "the saved weights do not load as they were merged (does the architecture's config hold every "
            "merged weight?)"
        )
    return {
        "max_abs_logit_diff": diff,
        "tolerance": tol,
        "reload_max_abs_diff": reload_diff,
        "reload_tolerance": reload_tol,
        "probe_examples": int(probe["input_ids"].shape[0]),
        "params": params,
        "dtype": spec.model.dtype,
        "merged_in": "float32",
    }


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--adapter", required=True, help="trained adapter folder")
    p.add_argument("--merged", required=True, help="folder for the merged model")
    p.add_argument("--check", required=True, help="merge_check.json to write")
    args = p.parse_args(argv)
    spec = RunSpec.from_dict(cli.start(args))
    try:
        record = merge(spec, args.adapter, Path(args.merged))
    except MergeMismatch as e:
        sys.exit(f"merge check failed: {e}")
    artifacts.write_json(args.check, record)
    log.info(
        "%s: %s",
        record["run_id"],
        {k: record[k] for k in ("merge", "mergeable", "saved", "max_abs_logit_diff", "reason") if k in record},
    )


if __name__ == "__main__":
    main()
