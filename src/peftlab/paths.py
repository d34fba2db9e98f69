"""The results path grammar: where every file of a matrix lies, for the package and the rules alike.

Every path starts at a matrix's root, `results/<matrix name>`. The functions take a
key (a run id, a task, a model) or a Snakemake wildcard such as "{run_id}", so the
rules and the package spell each path once, here:

    <root>/specs/<stage>/<key>.json        a stage's spec, written by its job as it starts
    <root>/raw/<task>/{train,eval}.jsonl   generated data
    <root>/models/<model>/                 a built model
    <root>/data/<task>/<model>/            tokenised data, shared by every run on them
    <root>/runs/<run_id>/                  adapter/, tracking/, train.json, eval.json, predictions.jsonl,
                                           merged/, merge_check.json
    <root>/checkpoints/<run_id>/           outside every declared output (Snakemake deletes those on a rerun)
    <root>/lr_search/<cell>.json           a learning-rate search's selection (peftlab.lr_search)
    <root>/logs/<stage>/<key>.log          and benchmarks/<stage>/<key>.tsv
    <root>/tables/                         summary tables and plots
"""

from __future__ import annotations

RESULTS = "results"


# a run id's shape: task/model/method/settings (a sweep cell) or task/model/name (a named
# experiment), each part a safe name (peftlab.schema.SAFE_NAME); the workflow's wildcard constraint
_PART = r"[A-Za-z0-9][A-Za-z0-9._+-]*"
RUN_ID = rf"{_PART}(?:/{_PART}){{2,3}}"


def root(matrix: str) -> str:
    return f"{RESULTS}/{matrix}"


def spec(root: str, stage: str, key: str) -> str:
    return f"{root}/specs/{stage}/{key}.json"


def raw(root: str, task: str) -> str:
    return f"{root}/raw/{task}"


def raw_files(root: str, task: str) -> dict[str, str]:
    return {split: f"{raw(root, task)}/{split}.jsonl" for split in ("train", "eval")}


def model(root: str, name: str) -> str:
    return f"{root}/models/{name}"


def data(root: str, task: str, model: str) -> str:
    return f"{root}/data/{task}/{model}"


def run(root: str, run_id: str) -> str:
    return f"{root}/runs/{run_id}"


def adapter(root: str, run_id: str) -> str:
    return f"{run(root, run_id)}/adapter"


def tracking(root: str, run_id: str) -> str:
    return f"{run(root, run_id)}/tracking"


def train_record(root: str, run_id: str) -> str:
    return f"{run(root, run_id)}/train.json"


def eval_record(root: str, run_id: str) -> str:
    return f"{run(root, run_id)}/eval.json"


def predictions(root: str, run_id: str) -> str:
    return f"{run(root, run_id)}/predictions.jsonl"


def merged(root: str, run_id: str) -> str:
    return f"{run(root, run_id)}/merged"


def merge_check(root: str, run_id: str) -> str:
    return f"{run(root, run_id)}/merge_check.json"


# each run stage and the file that says it finished, in order
RUN_OUTPUTS = (("train_run", "train.json"), ("evaluate_run", "eval.json"), ("merge_run", "merge_check.json"))


def lr_choice(root: str, cell: str) -> str:
    return f"{root}/lr_search/{cell}.json"


def checkpoints(root: str, run_id: str) -> str:
    return f"{root}/checkpoints/{run_id}"


def log(root: str, stage: str, key: str) -> str:
    return f"{root}/logs/{stage}/{key}.log"


def benchmark(root: str, stage: str, key: str) -> str:
    return f"{root}/benchmarks/{stage}/{key}.tsv"


def tables(root: str) -> str:
    return f"{root}/tables"


def split_run(run_dir: str) -> tuple[str, str]:
    """A run folder -> (its matrix root, its run id)."""
    root, run_id = str(run_dir).split("/runs/", 1)
    return root, run_id
