"""Merge a trained adapter into its base and check that nothing changed.

    python -m peftlab.merge --spec results/default/specs/merge_run/<run_id>.json \
        --adapter results/default/runs/<run_id>/adapter \
        --merged results/default/runs/<run_id>/merged --check results/default/runs/<run_id>/merge_check.json

`merge_and_unload` writes a plain transformers model to merged/. merge_check.json
gives the largest absolute logit difference between the adapter model and the
merged model *reloaded from merged/*, on a fixed batch of eval examples; above
`numerics.MERGE_ULPS` float32 epsilons of the logits' scale (or on a NaN) the step
fails and leaves no merged/. Checking the reloaded copy catches weights that the
architecture's config cannot hold (and so silently drop on load). An adapter model
whose own logits are not finite fails before merging, with a message that says so.

Methods that cannot merge (prompt learning, bottleneck adapters) record why
instead of failing. QLoRA merges into the float32 base (the usual way to ship a
QLoRA model), and so does a run whose model loads in bfloat16 or float16: the
merge and its check run at float32 precision, and merged/ holds float32 weights.
`full` fine-tuning is already a plain model and is saved as is.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import datasets

from peftlab import artifacts, cli, methods, numerics
from peftlab.compute import logits
from peftlab.models import load_model, load_tokenizer, load_trained, probe_batch
from peftlab.spec import RunSpec

log = logging.getLogger(__name__)


class MergeMismatch(RuntimeError):
    """The merged model does not reproduce the adapter model."""


def merge(spec: RunSpec, adapter: str, merged: Path) -> dict:
    prov = artifacts.Provenance(spec.to_dict())
    method = methods.get(spec.peft.type)
    with artifacts.atomic_dir(merged) as tmp:
        if not method.mergeable:
            (tmp / "NOT_MERGED.txt").write_text(method.not_mergeable_reason + "\n")
            return {"run_id": spec.run_id, "mergeable": False, "reason": method.not_mergeable_reason, **prov.record()}
        tokenizer = load_tokenizer(spec.model)
        model = load_trained(spec, adapter, tokenizer, float32=True)
        probe = probe_batch(datasets.load_from_disk(spec.data_dir)["eval"], tokenizer, spec.task)
        before = logits(model, probe)
        if not numerics.finite(before):
            raise MergeMismatch(
                f"{spec.run_id}: the adapter model itself gives non-finite logits on the probe batch: the adapter is broken "
                "(did training diverge?), so there is nothing sound to merge"
            )
        tol = numerics.tolerance(before, numerics.MERGE_ULPS)
        plain = model.merge_and_unload() if method.impl else model
        if fix := methods.hook(method, "after_merge"):
            fix(plain)
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del model, plain
        reloaded = load_model(spec.model, spec.task, tokenizer, path=str(tmp), float32=True)
        diff = numerics.max_abs_diff(logits(reloaded, probe), before)
        if not numerics.within(diff, tol):  # leaves no merged/ behind
            raise MergeMismatch(
                f"{spec.run_id}: the merged model, reloaded, differs from the adapter model by {diff:.3g} > {tol:.3g} "
                f"(the adapter model's largest |logit| is {before.abs().max().item():.3g})"
            )
    return {
        "run_id": spec.run_id,
        "mergeable": True,
        "max_abs_logit_diff": diff,
        "tolerance": tol,
        "probe_examples": int(probe["input_ids"].shape[0]),
        "base": "float32" if method.quantized or spec.model.dtype != "float32" else "as trained",
        **prov.record(),
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
    log.info("%s: %s", record["run_id"], {k: record[k] for k in ("mergeable", "max_abs_logit_diff", "reason") if k in record})


if __name__ == "__main__":
    main()
