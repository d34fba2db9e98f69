"""Build the tiny offline model (peftlab.tiny): a tokenizer trained on a task's texts and a small Llama (or T5), briefly
pretrained.

python -m peftlab.build --spec results/default/specs/model_build/tiny-llama.json --out results/default/models/tiny-llama
"""

from __future__ import annotations

import logging

from peftlab import artifacts, cli
from peftlab.tiny import build_tiny

log = logging.getLogger(__name__)


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--out", required=True, help="model folder to write")
    args = p.parse_args(argv)
    spec = cli.start(args)
    prov = artifacts.Provenance(spec)
    with artifacts.atomic_dir(args.out) as tmp:
        info = build_tiny(spec, tmp)
        artifacts.write_json(tmp / "build.json", {**info, **prov.record()})
    log.info("built %s: %s", args.out, {k: v for k, v in info.items() if k != "pretrain_losses"})


if __name__ == "__main__":
    main()
