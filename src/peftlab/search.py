"""Learning-rate search inside the matrix: candidates, search runs, the selection and the best-LR tables.

The selection step's command is peftlab.lr_search; the plan (peftlab.matrix), training, the
tables and the config checks read this module.

A sweep block (or the whole config) with `lr_search` does not train its cells at one
learning rate. For each cell (task, model, method, rank, train size) the plan adds one
**search run** per candidate rate and search seed: it trains on the training split
minus a held-out validation share (`validation_share`, drawn with `validation_seed`)
and is evaluated on that share only; the evaluation split is never opened. The
**selection** (`select`; `python -m peftlab.lr_search`, one job per cell) takes the mean of the selection
metric over the search seeds per rate and writes every candidate's scores and the
winner. The cell's **final runs** (one per final seed, the run ids a block without a
search would have) train on the whole training split at the winner's rate and are
evaluated on the held-out evaluation split as usual; their train.json records the rate.

A candidate whose training diverges scores as the worst; a cell whose every candidate
diverged fails its selection, naming them. A winner at either end of the grid is
flagged (`at_edge`) and logged: the best rate may lie outside the grid.

**Successive halving** (`lr_search.halving`, Jamieson & Talwalkar 2016; Li et al. 2018) spends less: the
search runs climb a `ladder` of rungs. At rung 0 every candidate trains for a first share of the run's
steps and is scored on the validation share; a **promotion** (`select` with a `rung`, the same selection
step) keeps the best 1/eta of the rates, and only those train on, resuming from their rung's checkpoint
(weights, optimiser state, data order) to eta times the budget. The last rung's best is the cell's selection.
Each rung's run has the schedule of a run of its budget: its learning rate warms up and decays over its own
steps, restarting at the resumed step's place in the longer horizon. Scored as prefixes of the whole run's
schedule instead (the rate still high at the rung's end), the rungs favour low rates: on config/test_lr.yaml
that picked LoRA's 3e-3 where the full grid, whose runs decay to the end, picks 3e-2 (validation loss
0.962 against 0.906 ± 0.025 over 4 seeds); with a schedule per rung, halving picks the grid's rates.
The plan has a job for every candidate at every rung, so a dry run shows the whole search; a pruned
candidate's later jobs finish at once with a "pruned" record.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from peftlab import artifacts, metrics

log = logging.getLogger(__name__)

LOSS = "eval_loss"  # `metric: loss` selects on the validation loss
SEARCH_KEYS = ("cell", "rates", "seeds", "validation_share", "validation_seed", "metric")  # what a selection is of
OPTIONAL_KEYS = ("halving",)  # part of what a selection is of where set (a grid search's files stay as they were)


def search_keys(search) -> dict:
    """What a selection is of, from a search dict or an LrSearchSpec: SEARCH_KEYS, and `halving` when set."""
    get = search.get if isinstance(search, dict) else lambda k, d=None: getattr(search, k, d)
    out = {k: get(k) for k in SEARCH_KEYS}
    out.update({k: get(k) for k in OPTIONAL_KEYS if get(k) is not None})
    return out


def ladder(n: int, halving: dict | None) -> list[dict]:
    """The rungs of a search over `n` rates: [{rung, share, candidates, keep}], where `share` is the rung's budget as a
    share of the run's training steps, `candidates` how many rates train to it and `keep` how many it promotes.

    A grid search is one rung: every rate for the whole run, keeping one. Successive halving keeps
    max(1, candidates // eta) at each rung, with budgets min_share * eta^k; by default min_share = eta^-R for
    R rungs, so that the budget after the last rung, where one rate is left, would be the whole run (whose
    training is then the final runs'). A rung that reaches the whole run is the last: it keeps one.
    """
    if halving is None:
        return [{"rung": 0, "share": 1.0, "candidates": n, "keep": 1}]
    eta, first = halving["eta"], halving.get("min_share")
    counts = [n]
    while counts[-1] > 1:
        counts.append(max(1, counts[-1] // eta))
    rungs = []
    for k, count in enumerate(counts[:-1]):
        share = min(1.0, first * eta**k) if first else float(eta) ** (k - (len(counts) - 1))
        rungs.append({"rung": k, "share": share, "candidates": count, "keep": counts[k + 1] if share < 1 else 1})
        if share >= 1:
            break
    return rungs


def stop_step(share: float, total: int) -> int:
    """The training step a rung's budget ends at, of a run of `total` steps."""
    return max(1, round(share * total))


def rung_steps(rung: dict | None, total: int) -> int:
    """The steps a search run at `rung` (its spec's; None for a grid search's run) trains itself, of a run of `total`
    steps: a halving rung from the rung below's budget to its own."""
    if rung is None:
        return total
    return stop_step(rung["share"], total) - (stop_step(rung["below"], total) if rung["below"] is not None else 0)


def trained_share(rung: dict | None) -> float:
    """The share of a cell's rates that train at `rung` (which ones is known once the rung below is scored; how many,
    now): its runs' expected share of their work. 1 for a grid search's run and at rung 0."""
    if rung is None:
        return 1.0
    rungs = ladder(len(rung["search"]["rates"]), rung["search"]["halving"])
    return rungs[rung["index"]]["candidates"] / rungs[0]["candidates"]


def expected_steps(rung: dict | None, total: int) -> float:
    """The training steps a search run at `rung` is expected to take: rung_steps × trained_share."""
    return rung_steps(rung, total) * trained_share(rung)


def rung_key(cell: str, rung: int) -> str:
    """The key of a halving search's promotion after `rung` (its file: paths.lr_choice(root, rung_key(...)))."""
    return f"{cell}-h{rung}"


def candidates(search: dict) -> list[float]:
    """The candidate rates, ascending: `rates` as given, or `range` {low, high, count} spaced evenly on a log scale."""
    if "rates" in search:
        return sorted(float(r) for r in search["rates"])
    r = search["range"]
    low, high, n = math.log10(r["low"]), math.log10(r["high"]), r["count"]
    return [float(f"{10 ** (low + i * (high - low) / (n - 1)):.3g}") for i in range(n)]


def resolved(search: dict) -> dict:
    """A validated config's lr_search (the schema's defaults filled in) with its candidates listed."""
    out = {k: v for k, v in search.items() if k not in ("rates", "range")}
    out["rates"] = candidates(search)
    return out


def cell_id(task: str, model: str, method: str, parts: list[str]) -> str:
    """A search cell's id: task/model/method/search[-r8][-n100] (the final runs' ids without their seed)."""
    return f"{task}/{model}/{method}/{'-'.join(['search', *parts])}"


def search_run_id(cell: str, seed: int, rate: float, rung: int | None = None) -> str:
    """A search run's id: its cell's id with the search seed and the candidate rate (and, under successive halving,
    its rung: -h0, -h1, ...)."""
    return f"{cell}-s{seed}-lr{rate:g}" + (f"-h{rung}" if rung is not None else "")


def below(run_id: str, rung: int) -> str:
    """The run a halving search's run at `rung` (above 0) resumes: its rate and seed's run at the rung below."""
    return f"{run_id.removesuffix(f'-h{rung}')}-h{rung - 1}"


def cell_of(run_id: str) -> str:
    """A search run's cell: its id without the search seed and rate (the inverse of search_run_id)."""
    return run_id.rsplit("-s", 1)[0]


def select_spec(search: dict, rung: int | None = None) -> dict:
    """The selection step's spec of a cell, from its final runs' lr_search: the metric, its direction, and the search
    runs it reads. Under successive halving: the `ladder`, and with `rung` the promotion after that rung (which
    reads the runs of rungs 0..rung), else the cell's selection (every rung's)."""
    halving = search.get("halving")
    rungs = ladder(len(search["rates"]), halving)
    upto = len(rungs) - 1 if rung is None else rung
    runs = {
        search_run_id(search["cell"], seed, rate, k if halving else None): {
            "rate": rate,
            "seed": seed,
            **({"rung": k} if halving else {}),
        }
        for k in range(upto + 1)
        for seed in search["seeds"]
        for rate in search["rates"]
    }
    spec = {**search_keys(search), "greater_is_better": metrics.metric(search["metric"]).higher_is_better}
    if halving:
        spec["ladder"] = rungs
        if rung is not None:
            spec["rung"] = rung
    return {**spec, "runs": runs}


def score(record: dict | None, metric: str) -> float | None:
    """A search run's score from its eval.json: None when it diverged or did not report the metric."""
    if record is not None and record.get("pruned"):
        raise RuntimeError(
            f"{record['run_id']} was pruned ({record['pruned']}), but its rung's promotion, recomputed from the same "
            "records, keeps it: the promotion file it read is stale; rerun the search (snakemake --forcerun lr_select)"
        )
    if record is None or record.get("diverged"):
        return None
    value = record["metrics"].get(metric)
    return float(value) if value is not None and math.isfinite(value) else None


def select(spec: dict, records: dict[str, dict | None]) -> dict:
    """The selection of one cell, or under successive halving a rung's promotion: every candidate's scores (mean over
    the search seeds) and the winner, or the rates that train on.

    `spec` is the lr_select spec (select_spec; peftlab.matrix.step_specs): the cell, its metric and direction,
    and its search runs {run_id: {rate, seed[, rung]}}; `records` maps each search run to its eval.json. A rate
    with any diverged seed scores None: it cannot win, and a halving search prunes it. Each rung ranks the rates
    still in (ties: the lower rate first) and keeps its `keep` best; a pruned rate's later runs are not read.
    """
    halving = "ladder" in spec
    rungs = spec["ladder"] if halving else ladder(len(spec["rates"]), None)
    upto = spec.get("rung", len(rungs) - 1)
    rows = {rate: {"rate": rate, "mean": None, "scores": {}, **({"rung": None, "rungs": []} if halving else {})}
            for rate in spec["rates"]}  # fmt: skip
    alive = list(spec["rates"])
    for step in rungs[: upto + 1]:
        for rate in alive:
            runs = {i: r for i, r in spec["runs"].items() if r["rate"] == rate and r.get("rung", 0) == step["rung"]}
            scores = {run_id: score(records.get(run_id), spec["metric"]) for run_id in runs}
            valid = [s for s in scores.values() if s is not None]
            mean = sum(valid) / len(valid) if valid and len(valid) == len(scores) else None
            seeds = {str(runs[k]["seed"]): s for k, s in scores.items()}
            rows[rate].update(mean=mean, scores=seeds)
            if halving:
                rows[rate]["rung"] = step["rung"]
                rows[rate]["rungs"].append(
                    {"rung": step["rung"], "share": step["share"], "mean": mean, "scores": seeds}
                )
        scored = [rate for rate in alive if rows[rate]["mean"] is not None]
        if not scored:
            at = f" at rung {step['rung']}" if halving else ""
            raise RuntimeError(
                f"{spec['cell']}: every candidate rate{at} diverged or reported no {spec['metric']} "
                f"({', '.join(f'{r:g}' for r in alive)}); lower the rates of this cell's lr_search"
            )
        alive = sorted(scored, key=lambda r: rows[r]["mean"], reverse=spec["greater_is_better"])[: step["keep"]]
    out = {
        **search_keys(spec),
        "greater_is_better": spec["greater_is_better"],
        **({"ladder": rungs} if halving else {}),
        "candidates": [rows[rate] for rate in spec["rates"]],
    }
    if "rung" in spec:  # a promotion: the rates that train to the next rung, best first
        return {**out, "rung": upto, "promoted": alive}
    best = rows[alive[0]]
    return {
        **out,
        "best_rate": best["rate"],
        "best_score": best["mean"],
        "at_edge": best["rate"] in (spec["rates"][0], spec["rates"][-1]),
    }


def promoted(promotion_file: str | Path, rung) -> list[float]:
    """The rates a halving search's promotion file lets train on, checked to be the promotion that a run at `rung`
    (its RunSpec.rung) reads: its search's, after the rung below."""
    sel = artifacts.read_json(promotion_file)
    expected = {**rung.search, "rung": rung.index - 1}
    found = {k: sel.get(k) for k in expected}
    if found != expected:
        raise RuntimeError(
            f"{promotion_file} is the promotion of another search or rung ({found}), not of this run's ({expected})"
        )
    return sel["promoted"]


def chosen_rate(selection_file: str | Path, lr_search) -> float:
    """The rate a final run trains at: its cell's selection, checked to be of this very search."""
    sel = artifacts.read_json(selection_file)
    expected = search_keys(lr_search)
    found = {k: sel.get(k) for k in [*SEARCH_KEYS, *OPTIONAL_KEYS] if k in expected or sel.get(k) is not None}
    if found != expected:
        raise RuntimeError(
            f"{selection_file} is the selection of another search ({found}), not of this run's ({expected})"
        )
    return sel["best_rate"]


def coordinates(cell: str) -> tuple[str, str, str, str]:
    """(task, model, method, setting) of a cell id; the setting is its rank and train size ('r8-n100'), or '-'."""
    task, model, method, last = cell.split("/")
    return task, model, method, last.removeprefix("search").lstrip("-") or "-"


def sharpness_by_cell(records: list[dict]) -> dict[str, float]:
    """Each searched cell's top Hessian eigenvalue at initialisation (train.json's `sharpness`,
    tracker.sharpness_probe): the mean over the cell's final runs, one per final seed, which trained at its chosen rate.
    The probe runs before the first optimiser step, so the rate does not enter it; the search runs, which hold out the
    validation share, are not read."""
    values: dict[str, list[float]] = {}
    for rec in records:
        cell = ((rec.get("spec") or {}).get("lr_search") or {}).get("cell")
        value = (rec.get("sharpness") or {}).get("top_eigenvalue")
        if cell is not None and value is not None and math.isfinite(value):
            values.setdefault(cell, []).append(float(value))
    return {cell: sum(v) / len(v) for cell, v in values.items()}


def history(candidate: dict) -> list[dict]:
    """A candidate's scores rung by rung, [{rung, share, mean, scores}]: a grid search's one score has rung None."""
    return candidate.get("rungs") or [
        {"rung": None, "share": 1.0, "mean": candidate["mean"], "scores": candidate["scores"]}
    ]


def table(selections: list[dict], sharpness: dict[str, float] | None = None) -> list[dict]:
    """best_lr.csv's rows: one per cell, candidate rate and rung it trained to (a grid search: one rung, None), with its
    mean score there, every seed's, and the winner marked at its last rung; `budget` is a halving rung's share of the
    run's steps. The chosen rate's row also holds the cell's `sharpness` (sharpness_by_cell), empty where no final run
    probed it."""
    sharpness = sharpness or {}
    rows = []
    for sel in selections:
        task, model, method, setting = coordinates(sel["cell"])
        for c in sel["candidates"]:
            for h in history(c):
                chosen = c["rate"] == sel["best_rate"] and h["rung"] == c.get("rung")
                rows.append(
                    {
                        "task": task,
                        "model": model,
                        "method": method,
                        "setting": setting,
                        "metric": sel["metric"],
                        "rate": c["rate"],
                        "rung": h["rung"],
                        "budget": h["share"] if h["rung"] is not None else None,
                        "score": h["mean"],
                        "seeds": " ".join(
                            f"s{k}={'diverged' if v is None else f'{v:.4g}'}" for k, v in h["scores"].items()
                        ),
                        "chosen": chosen,
                        "at_edge": sel["at_edge"] and chosen,
                        "sharpness": sharpness.get(sel["cell"]) if chosen else None,
                    }
                )
    return rows


def _fraction(share: float) -> str:
    """A rung's budget for people: 1/4 rather than 0.25 where it is one over a whole number."""
    return f"1/{round(1 / share)}" if share < 1 and abs(1 / share - round(1 / share)) < 1e-9 else f"{share:g}"


def halving_line(sel: dict) -> str:
    """A halving search's ladder in words: its eta, each rung's budget and how many rates trained to it."""
    rungs = sel["ladder"]
    counts = " → ".join([*(str(r["candidates"]) for r in rungs), str(rungs[-1]["keep"])])
    budgets = ", ".join(_fraction(r["share"]) for r in rungs)
    return f"successive halving, eta {sel['halving']['eta']}: rungs at {budgets} of the steps, {counts} rates"


def markdown(selections: list[dict], sharpness: dict[str, float] | None = None) -> str:
    """best_lr.md: per cell, the chosen rate and every candidate's score (the winner in bold, an edge winner flagged;
    under successive halving the score at each rung it trained to), and beside the rate the cell's top Hessian
    eigenvalue at initialisation when its final runs probed it (sharpness_by_cell)."""
    sharpness = {cell: v for cell, v in (sharpness or {}).items() if cell in {sel["cell"] for sel in selections}}
    column = "λ_max at init | " if sharpness else ""
    lines = [
        "# Learning-rate search\n",
        "Each cell's candidates, scored on the validation share held out of its training data (the mean over the "
        "search seeds); its final runs trained at the chosen rate. *edge*: the best rate is the grid's lowest or "
        "highest, so a better one may lie outside the grid.\n",
        "| task | model | method | setting | metric | chosen rate | " + column + "candidates (rate: score) |",
        "|---|---|---|---|---|---|" + ("---|" if sharpness else "") + "---|",
    ]
    if sharpness:
        lines.insert(
            2,
            "λ_max at init: the largest eigenvalue of the training loss's Hessian in the method's trainable parameters "
            "before the first step (tracker.sharpness_probe), the mean over the cell's final runs; gradient descent is "
            "stable below a rate of about 2 / λ_max.\n",
        )
    halving = sorted({halving_line(sel) for sel in selections if sel.get("halving")})
    if halving:
        lines.insert(
            2,
            "Searched by successive halving: every rate trains for a first share of the steps, and only the best "
            "resume to the next rung; a candidate's scores are listed rung by rung (→), so a rate pruned early shows "
            f"fewer. Here: {'; '.join(halving)}.\n",
        )
    for sel in selections:
        task, model, method, setting = coordinates(sel["cell"])
        cands = ", ".join(
            ("**{}: {}**" if c["rate"] == sel["best_rate"] else "{}: {}").format(
                f"{c['rate']:g}",
                " → ".join("diverged" if h["mean"] is None else f"{h['mean']:.4g}" for h in history(c)),
            )
            for c in sel["candidates"]
        )
        edge = " (edge)" if sel["at_edge"] else ""
        probed = (f"{sharpness[sel['cell']]:.4g} | " if sel["cell"] in sharpness else " | ") if sharpness else ""
        lines.append(
            f"| {task} | {model} | {method} | {setting} | {sel['metric']} | {sel['best_rate']:g}{edge} | "
            f"{probed}{cands} |"
        )
    return "\n".join(lines) + "\n"
