"""Where a run goes and how it starts: Slurm resources and the launch command, from the run's config.

A run's `resources` (set at the top of a config, per model, per sweep block or per
experiment; each level overrides the one before) say what its training job needs:

    gpus: GPUs per node          nodes: nodes             cpus_per_gpu: CPU cores per GPU
    threads: CPU threads of a job without GPUs            mem_mb: memory per node (MB)
    runtime: minutes             gpu_model, constraint, partition, qos: the site's names, optional

or name a preset (`resources: 1gpu`, or `{preset: 4gpu, runtime: 2880}`).

`slurm_resources` turns them into the resources snakemake-executor-plugin-slurm
reads; memory and runtime grow with the attempt, so `--retries` helps a job that
hit its limits. `launcher` gives the command that starts a training job (the only
stage that runs on more than one process; evaluation and merging run `python -m`
as their rules say):
- one process: `python -m peftlab.train`;
- several GPUs on one node: `torchrun --standalone --nproc-per-node=G -m peftlab.train`;
- several nodes (the plugin's MPI path, one task per node): `srun` starts one
  torchrun per node; the allocation's first node serves the c10d rendezvous.
The backend follows the device: nccl on GPUs, gloo on CPU (the Trainer picks it).

Pure functions: nothing here imports torch or talks to Slurm.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace


class ResourcesError(ValueError):
    """A resources value that names an unknown preset or key, or asks for nonsense."""


@dataclass(frozen=True)
class Resources:
    gpus: int = 0
    nodes: int = 1
    cpus_per_gpu: int = 4
    threads: int = 1
    mem_mb: int = 4000
    runtime: int = 60
    gpu_model: str | None = None
    constraint: str | None = None
    partition: str | None = None
    qos: str | None = None

    @property
    def procs_per_node(self) -> int:
        """Training processes per node: one per GPU, or one on a node without GPUs."""
        return max(self.gpus, 1)

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    @property
    def cpus_per_task(self) -> int:
        """CPU cores of one Slurm task (one task per node)."""
        return self.gpus * self.cpus_per_gpu if self.gpus else self.threads

    def single(self) -> Resources:
        """One process on one node (evaluation): at most one GPU."""
        return replace(self, nodes=1, gpus=min(self.gpus, 1))

    def cpu_only(self) -> Resources:
        """No GPU (merging: memory-bound, checked in float32): the cores of one GPU share."""
        return replace(self, nodes=1, gpus=0, threads=self.cpus_per_gpu if self.gpus else self.threads)


PRESETS: dict[str, Resources] = {
    "tiny": Resources(threads=1, mem_mb=2000, runtime=30),  # CPU smoke tests
    "cpu": Resources(threads=4, mem_mb=16000, runtime=120),
    "1gpu": Resources(gpus=1, cpus_per_gpu=8, mem_mb=64000, runtime=720),
    "4gpu": Resources(gpus=4, cpus_per_gpu=8, mem_mb=256000, runtime=1440),
    "2x4gpu": Resources(gpus=4, nodes=2, cpus_per_gpu=8, mem_mb=256000, runtime=1440),
}
KEYS = tuple(f.name for f in fields(Resources))

# every key slurm_resources may set; a rule declares each (None leaves it unset)
SLURM_KEYS = (
    "mem_mb",
    "runtime",
    "cpus_per_task",
    "slurm_partition",
    "qos",
    "constraint",
    "gpu",
    "gpu_model",
    "gres",
    "tasks_per_gpu",
    "nodes",
    "tasks",
    "mpi",
)


def resolve(
    value: str | dict | None, base: Resources = Resources(), presets: dict[str, Resources] | None = None
) -> Resources:
    """A config's resources value over `base`: a preset name, or keys, one of which may be `preset`.

    A preset replaces everything `base` set; keys next to it override the preset.
    """
    presets = {**PRESETS, **(presets or {})}
    if value is None:
        return base
    if isinstance(value, str):
        value = {"preset": value}
    value = dict(value)
    if "preset" in value:
        name = value.pop("preset")
        if name not in presets:
            raise ResourcesError(f"unknown preset {name!r}; allowed: {', '.join(presets)}")
        base = presets[name]
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        raise ResourcesError(f"unknown key(s) {', '.join(map(repr, unknown))}; allowed: preset, {', '.join(KEYS)}")
    return replace(base, **value)


def for_stage(r: Resources, stage: str) -> Resources:
    """What a run's stage gets: training as configured, evaluation one process (one GPU at most), merging the CPU."""
    return {"train": r, "evaluate": r.single(), "merge": r.cpu_only()}[stage]


def rule_resources(by_run: dict[str, Resources], stage: str, packing: Callable[[], bool] = lambda: False) -> dict:
    """A run rule's `resources:` for every run of a matrix ({run id: its Resources}).

    Snakemake inspects a resource function's signature for every job it plans, which
    made planning a 1,000-run matrix several times slower than a bare workflow's. So a
    key that no run sets is left out, a key every run sets alike is a constant, and only
    memory and runtime (which grow with the attempt) and keys the runs disagree on are
    functions of the job's run id. Worked out once per distinct Resources (a matrix has
    a few), not per run: every Slurm job parses the workflow again. While `packing()`
    (asked per job: Snakemake knows its group settings only once the workflow is
    parsed), evaluation and merging leave the GPU model to training (see pack_group).
    """
    first = {r: slurm_resources(for_stage(r, stage)) for r in set(by_run.values())}
    out: dict = {}
    for key in SLURM_KEYS:
        values = {d.get(key) for d in first.values()}
        if values <= {None}:
            continue
        if key in ("mem_mb", "runtime"):
            out[key] = lambda wc, attempt, key=key: slurm_resources(for_stage(by_run[wc.run_id], stage), attempt)[key]
        elif key == "gpu_model" and stage != "train":
            out[key] = lambda wc: None if packing() else first[by_run[wc.run_id]].get("gpu_model")
        elif len(values) == 1:
            out[key] = values.pop()
        else:
            out[key] = lambda wc, key=key: first[by_run[wc.run_id]].get(key)
    return out


def rule_threads(by_run: dict[str, Resources], stage: str):
    """A run rule's `threads:`: a constant when every run has the same, else a function of the run id."""
    threads = {for_stage(r, stage).cpus_per_task for r in set(by_run.values())}
    if len(threads) <= 1:
        return threads.pop() if threads else 1
    return lambda wc: for_stage(by_run[wc.run_id], stage).cpus_per_task


# the job group --group-components counts when packing runs (`--group-components run=N`)
PACK = "run"
PACKED_RULES = ("train_run", "evaluate_run", "merge_run")


def pack_group(r: Resources) -> str | None:
    """The job group of a run's train, evaluate and merge jobs when packing, so that one sbatch call holds only runs
    with equal resources.

    Snakemake asks for one request per group: a string resource (partition, QoS,
    constraint, GPU model) must be the same in all its jobs, and numbers are summed or
    maxed. So each resource class gets its own group: `run-<partition>-<GPUs>-<digest>`,
    the digest over every key. Within a run, evaluation and merging run side by side and
    merging asks for no GPU: packed, they leave the GPU model to training (rule_resources).
    A multi-node run gets none and is submitted alone: the plugin's MPI path starts one
    srun task per node in its own allocation, which a packed job cannot hold.
    """
    if r.nodes > 1:
        return None
    label = [r.partition or "default", f"{r.gpus}gpu" if r.gpus else "cpu"]
    digest = hashlib.sha1(repr(r).encode()).hexdigest()[:8]
    return "-".join([PACK, *(re.sub(r"[^A-Za-z0-9.]", "_", part) for part in label), digest])


def pack_groups(by_run: dict[str, Resources]) -> dict[str, str | None]:
    """{run id: its pack_group}, worked out once per distinct Resources."""
    names = {r: pack_group(r) for r in set(by_run.values())}
    return {run_id: names[r] for run_id, r in by_run.items()}


def check_packing(by_run: dict[str, Resources], groups: Mapping[str, str], caps: Mapping[str, int]) -> None:
    """Refuse what packing cannot run as asked: `--groups` on the run rules, or runs over the packed job's caps.

    `groups` is Snakemake's --groups: one name for every run would pack runs with
    different resources together, which Snakemake refuses only once it submits them.
    `caps` is its --resources: Snakemake shrinks every job to them, so a run asking for
    more would start with less memory, fewer cores or fewer GPUs than it needs.
    """
    overridden = sorted(set(groups) & set(PACKED_RULES))
    if overridden:
        raise ResourcesError(
            f"`groups:` (--groups) puts {', '.join(overridden)} of every run in one group, whatever their resources; "
            f"drop it: `group-components: [{PACK}=N]` alone packs N runs with the same resources per sbatch call "
            '(docs/slurm.md, "Packing short runs into fewer Slurm jobs")'
        )
    runs: dict[Resources, list[str]] = {}
    for run_id, r in by_run.items():
        runs.setdefault(r, []).append(run_id)
    for r, ids in runs.items():
        for stage in ("train", "evaluate", "merge"):
            asked = slurm_resources(for_stage(r, stage))
            over = [
                f"{key}={asked[key]} (cap {cap})"
                for key, cap in caps.items()
                if isinstance(asked.get(key), int) and asked[key] > cap
            ]
            if over:
                more = f" and {len(ids) - 1} more run(s) with its resources" if len(ids) > 1 else ""
                raise ResourcesError(
                    f"run {ids[0]}{more}: its {stage} job asks for {', '.join(over)}, more than the profile's "
                    "`resources:` "
                    "allow a packed job, and Snakemake would shrink the request to the cap; raise the cap, "
                    "or lower the run's `resources`"
                )


def slurm_resources(r: Resources, attempt: int = 1) -> dict:
    """The slurm plugin's resources for one job; memory and runtime scale with the attempt.

    One node: `gpu` (and `gpu_model`) become `--gpus=[model:]G`. Several nodes:
    `gres=gpu[:model]:G` is per node (`--gpus` would be the job's total, spread
    as Slurm likes), `tasks_per_gpu=0` stops the plugin from turning `tasks`
    into `--ntasks-per-gpu`, and `nodes=tasks=N, mpi="srun"` is the plugin's
    MPI path: the rule's shell runs once and starts one launcher per node.
    """
    out = {"mem_mb": r.mem_mb * attempt, "runtime": r.runtime * attempt, "cpus_per_task": r.cpus_per_task}
    for key, value in (("slurm_partition", r.partition), ("qos", r.qos), ("constraint", r.constraint)):
        if value:
            out[key] = value
    if r.nodes == 1:
        if r.gpus:
            out["gpu"] = r.gpus
            if r.gpu_model:
                out["gpu_model"] = r.gpu_model
        return out
    if r.gpus:
        out["gres"] = ":".join(["gpu", *([r.gpu_model] if r.gpu_model else []), str(r.gpus)])
        out["tasks_per_gpu"] = 0
    out.update(nodes=r.nodes, tasks=r.nodes, mpi="srun")
    return out


def launcher(r: Resources, stage: str) -> str:
    """The shell words that start `python -m peftlab.<stage>` on `r` (the workflow's train_run: stage "train"); the
    stage's arguments follow them."""
    module = ["-m", f"peftlab.{stage}"]
    if r.world_size == 1:
        return shlex.join(["python", *module])
    if r.nodes == 1:
        return shlex.join(["torchrun", "--standalone", f"--nproc-per-node={r.procs_per_node}", *module])
    # The plugin's MPI path runs this once inside the allocation with every SLURM_*
    # variable but the job id removed; srun joins the job by id and gives each of its
    # tasks (one per node) SLURM_JOB_NODELIST and SLURM_NODEID back. Each task then
    # works out the rendezvous itself, with no call to the controller: node 0, the
    # allocation's first host, serves it (said outright, not guessed from host names)
    # on a port drawn from the job id, so two jobs sharing a first node do not collide.
    # The stage's arguments, appended after this, reach torchrun as "$@".
    per_node = " ".join(
        [
            'set -euo pipefail; first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p);',
            f"exec torchrun --nnodes={r.nodes} --nproc-per-node={r.procs_per_node}",
            '--rdzv-backend=c10d --rdzv-id="$SLURM_JOB_ID"',
            '--rdzv-endpoint="$first:$((20000 + SLURM_JOB_ID % 20000))"',
            "--rdzv-conf=is_host=$((SLURM_NODEID == 0))",
            *module,
            '"$@"',
        ]
    )
    return " ".join(
        [
            ': "${SLURM_JOB_ID:?a multi-node run needs a Slurm allocation: use --profile profiles/slurm, or '
            'nodes: 1}" &&',
            'srun --jobid="$SLURM_JOB_ID"',
            f"--nodes={r.nodes} --ntasks={r.nodes} --ntasks-per-node=1",
            "bash -c",
            shlex.quote(per_node),
            "torchrun",
        ]
    )
