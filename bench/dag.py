"""What planning a large matrix costs: `snakemake -n` on peftlab's workflow against a bare Snakefile of the same job
shape.

    python bench/dag.py [--runs 1000 10000] [--repeats 1]

For each size N, in one temporary folder:
1. a config of N runs on the test matrix's tasks and models (methods × ranks × seeds);
2. a bare Snakefile of the same work, job for job (data, model build, tokenising, train,
   evaluate, merge, tables), with the same files and wildcards but none of peftlab's own
   bookkeeping: its run ids are a Python list and its shell commands `touch`.

Both are dry-run from a clean folder (`snakemake -n --cores 1`), and the ratio of their
wall times is printed. Then the start-up that every Slurm job pays: Snakemake re-parses the
workflow inside the job and plans only that job (`--target-jobs`, as the executor plugin
calls it), timed for one train_run of the N-run matrix, with the number of spec files it
opened (from a Python audit hook in the same process).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}  # this checkout's peftlab, whichever is installed
METHODS = ["lora", "dora", "pissa", "milora", "olora", "rslora", "lora_plus", "vera", "adalora", "miss"]
RANKS = [4, 8, 16, 32, 64]

BARE = """
import json
RUNS = json.load(open("runs.json"))
ROOT = "results/bench"
STAGES = ("train_run", "evaluate_run", "merge_run")


wildcard_constraints:
    run_id=r"[A-Za-z0-9][A-Za-z0-9._+-]*(/[A-Za-z0-9][A-Za-z0-9._+-]*){2,3}",


rule all:
    input:
        expand(ROOT + "/runs/{run_id}/eval.json", run_id=RUNS),
        expand(ROOT + "/runs/{run_id}/merge_check.json", run_id=RUNS),
        ROOT + "/tables/summary.md",


rule data_generate:
    output: directory(ROOT + "/raw/{task}")
    log: ROOT + "/logs/data_generate/{task}.log"
    shell: "mkdir -p {output}"


rule model_build:
    input: corpus=ROOT + "/raw/arith"
    output: directory(ROOT + "/models/{model}")
    log: ROOT + "/logs/model_build/{model}.log"
    benchmark: ROOT + "/benchmarks/model_build/{model}.tsv"
    shell: "mkdir -p {output}"


rule data_tokenize:
    input: data=ROOT + "/raw/{task}", model=ROOT + "/models/{model}"
    output: directory(ROOT + "/data/{task}/{model}")
    log: ROOT + "/logs/data_tokenize/{task}/{model}.log"
    benchmark: ROOT + "/benchmarks/data_tokenize/{task}/{model}.tsv"
    shell: "mkdir -p {output}"


rule train_run:
    input:
        data=lambda wc: ROOT + "/data/" + "/".join(wc.run_id.split("/")[:2]),
        model=lambda wc: ROOT + "/models/" + wc.run_id.split("/")[1],
    output:
        adapter=directory(ROOT + "/runs/{run_id}/adapter"),
        tracking=directory(ROOT + "/runs/{run_id}/tracking"),
        record=ROOT + "/runs/{run_id}/train.json",
    log: ROOT + "/logs/train_run/{run_id}.log"
    benchmark: ROOT + "/benchmarks/train_run/{run_id}.tsv"
    threads: 1
    resources: mem_mb=8000, runtime=60, cpus_per_task=1
    shell: "touch {output}"


rule evaluate_run:
    input: adapter=ROOT + "/runs/{run_id}/adapter"
    output: record=ROOT + "/runs/{run_id}/eval.json", predictions=ROOT + "/runs/{run_id}/predictions.jsonl"
    log: ROOT + "/logs/evaluate_run/{run_id}.log"
    benchmark: ROOT + "/benchmarks/evaluate_run/{run_id}.tsv"
    threads: 1
    resources: mem_mb=8000, runtime=60, cpus_per_task=1
    shell: "touch {output}"


rule merge_run:
    input: adapter=ROOT + "/runs/{run_id}/adapter"
    output: check=ROOT + "/runs/{run_id}/merge_check.json"
    log: ROOT + "/logs/merge_run/{run_id}.log"
    benchmark: ROOT + "/benchmarks/merge_run/{run_id}.tsv"
    threads: 1
    resources: mem_mb=8000, runtime=60, cpus_per_task=1
    shell: "touch {output}"


rule tables_build:
    input:
        expand(ROOT + "/runs/{run_id}/{out}", run_id=RUNS, out=["train.json", "eval.json", \
"merge_check.json", "predictions.jsonl"]),
    output: ROOT + "/tables/summary.md"
    log: ROOT + "/logs/tables_build/tables.log"
    localrule: True
    shell: "touch {output}"
"""


def matrix(n: int) -> dict:
    """The test matrix's tasks and models with n runs (n a multiple of 50): methods × ranks × seeds on arith, methods ×
    5 seeds on sentiment."""
    test = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    seeds = max(1, n // (len(METHODS) * len(RANKS)) - 1)
    sweep = [
        {"task": "arith", "model": "tiny-llama", "method": METHODS, "rank": RANKS, "seed": list(range(1, seeds + 1))},
        {"task": "sentiment", "model": "minilm", "method": METHODS, "seed": [1, 2, 3, 4, 5]},
    ]
    return {**{k: test[k] for k in ("tasks", "models", "training", "wandb")}, "name": "bench", "sweep": sweep}


def snakemake(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=cwd,
        env=ENV,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return time.perf_counter() - start


def run_ids(config: Path) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "peftlab.config", str(config)], env=ENV, check=True, capture_output=True, text=True
    )
    return out.stdout.split()


# Runs inside the job's interpreter: counts the spec files Snakemake's job opens, then runs Snakemake.
JOB = """
import sys
opened = []
def hook(event, args):
    if event == "open" and isinstance(args[0], str) and "/specs/" in args[0]:
        opened.append(args[0])
sys.addaudithook(hook)
from snakemake.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("SPECS_OPENED", len(set(opened)), file=sys.stderr)
"""


def job_startup(folder: Path, run_id: str) -> tuple[float, int]:
    """Parse the workflow and plan one train_run the way a Slurm job does; (seconds, spec files opened)."""
    args = [
        "-s",
        str(ROOT / "workflow/Snakefile"),
        "--configfile",
        "config.yaml",
        "--cores",
        "1",
        "-n",
        "--allowed-rules",
        "train_run",
    ]
    args += ["--target-jobs", f"train_run:run_id={run_id}", "--mode", "remote", "--nolock"]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", JOB, *args], cwd=folder, capture_output=True, text=True, env=ENV)
    wall = time.perf_counter() - start
    counts = [line for line in done.stderr.splitlines() if line.startswith("SPECS_OPENED")]
    if not counts:
        raise RuntimeError(done.stderr[-2000:])
    return wall, int(counts[-1].split()[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--repeats", type=int, default=1, help="dry runs of each; the fastest is kept")
    args = p.parse_args()
    print(f"{'runs':>6} {'peftlab s':>10} {'bare s':>8} {'ratio':>6} {'job start s':>12} {'specs read':>10}")
    for n in args.runs:
        with tempfile.TemporaryDirectory() as tmp:
            ours, bare = Path(tmp, "peftlab"), Path(tmp, "bare")
            ours.mkdir()
            bare.mkdir()
            (ours / "config.yaml").write_text(yaml.safe_dump(matrix(n)))
            ids = run_ids(ours / "config.yaml")
            (bare / "runs.json").write_text(json.dumps(ids))
            (bare / "Snakefile").write_text(BARE)
            t_ours = min(
                snakemake(
                    [
                        "-s",
                        str(ROOT / "workflow/Snakefile"),
                        "--configfile",
                        "config.yaml",
                        "-n",
                        "--cores",
                        "1",
                    ],
                    ours,
                )
                for _ in range(args.repeats)
            )
            # both with the same flags and no profile: profiles/default's printshellcmds would print every job's
            # shell command on one side only
            t_bare = min(snakemake(["-s", "Snakefile", "-n", "--cores", "1"], bare) for _ in range(args.repeats))
            t_job, specs = job_startup(ours, ids[0])
            print(
                f"{len(ids):>6} {t_ours:>10.1f} {t_bare:>8.1f} {t_ours / t_bare:>6.2f} {t_job:>12.1f} {specs:>10}",
                flush=True,
            )


if __name__ == "__main__":
    main()
