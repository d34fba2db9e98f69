"""Write a task's data (peftlab.dataset): generated raw data, or the data tokenised for a model.

    python -m peftlab.data generate --spec results/default/specs/data_generate/sentiment.json --out results/default/raw/sentiment
    python -m peftlab.data tokenize --spec results/default/specs/data_tokenize/sentiment/minilm.json --out results/default/data/sentiment/minilm

Tokenised data is a DatasetDict on disk with splits `train` and `eval` plus `meta.json`; it is
shared by every run on that task and model.
"""  # noqa: E501

from __future__ import annotations

import logging

from peftlab import artifacts, cli
from peftlab.dataset import DataError, check_lengths, generate, label_names, load_raw, tokenize
from peftlab.spec import ModelSpec, TaskSpec

log = logging.getLogger(__name__)


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("command", choices=["generate", "tokenize"])
    p.add_argument("--out", required=True, help="folder to write")
    args = p.parse_args(argv)
    spec = cli.start(args)
    prov = artifacts.Provenance(spec)
    try:
        run(args.command, spec, args.out, prov)
    except DataError as e:  # one line that names the file, the column and the rows; no traceback to dig through
        raise SystemExit(f"data error: {e}") from None


def run(command: str, spec: dict, out: str, prov: artifacts.Provenance) -> None:
    """Generate raw data, or tokenise a task for a model, into `out` (written whole or not at all)."""
    with artifacts.atomic_dir(out) as tmp:
        if command == "generate":
            meta = {"counts": generate(spec["data"], tmp)}
        else:
            from peftlab.methods.targets import max_positions
            from peftlab.models import load_config, load_tokenizer

            task, model = TaskSpec.from_dict(spec["task"]), ModelSpec.from_dict(spec["model"])
            check_lengths(task, max_positions(load_config(model).to_dict()))
            raw = load_raw(task)
            ds = tokenize(task, load_tokenizer(model), raw)
            ds.save_to_disk(str(tmp))
            lengths = ds["train"]["length"]
            meta = {
                "label_names": label_names(task, raw),
                "counts": {k: len(v) for k, v in ds.items()},
                "mean_train_length": sum(lengths) / len(lengths),
                "max_train_length": max(lengths),
            }
        artifacts.write_json(tmp / "meta.json", {**meta, **prov.record()})
    log.info("%s -> %s: %s", command, out, meta)


if __name__ == "__main__":
    main()
