"""The selection step of a learning-rate search (peftlab.search): one job per cell.

    python -m peftlab.lr_search --spec results/<m>/specs/lr_select/<cell>.json \
        --out results/<m>/lr_search/<cell>.json results/<m>/runs/<search run>/eval.json ...

Reads every search run's eval.json, writes the selection (every candidate's scores and the
winner, peftlab.search.select), and warns when the winner is at the grid's edge. For a halving search's
promotion (the spec's `rung`), writes the rates that train on to the next rung instead.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from peftlab import artifacts, paths
from peftlab.search import select

log = logging.getLogger(__name__)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True, help="the cell's lr_select spec")
    p.add_argument("--out", required=True, help="the selection JSON to write")
    p.add_argument("records", nargs="+", help="the search runs' eval.json files")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    spec = artifacts.read_json(args.spec)
    records = {}
    for f in args.records:
        rec = artifacts.read_json(f)
        records[paths.split_run(str(Path(f).parent))[1]] = rec
    missing = sorted(set(spec["runs"]) - set(records))
    if missing:
        raise SystemExit(f"{spec['cell']}: no eval.json given for search run(s) {', '.join(missing)}")
    result = select(spec, records)
    if "promoted" in result:
        artifacts.write_json(args.out, result)
        log.info(
            "%s: rung %d promotes %s", spec["cell"], result["rung"], ", ".join(f"{r:g}" for r in result["promoted"])
        )
        return
    if result["at_edge"]:
        end = "lowest" if result["best_rate"] == result["rates"][0] else "highest"
        log.warning(
            "%s: the best rate %g is the grid's %s; widen lr_search's grid past it",
            spec["cell"],
            result["best_rate"],
            end,
        )
    artifacts.write_json(args.out, result)
    log.info("%s: best rate %g (%s %.4g)", spec["cell"], result["best_rate"], spec["metric"], result["best_score"])


if __name__ == "__main__":
    main()
