"""Where a run goes and how it starts: Slurm resources and the launch command, from the run's spec.

A run's `resources` (defaults at the top of a config, overridable per model and per
sweep block or experiment, or a named preset) say what one job needs:

    gpus: GPUs per node          nodes: nodes             cpus_per_gpu: CPU cores per GPU
    threads: CPU threads (no GPU)                         mem_mb: memory per node (MB)
    runtime: minutes             gpu_model, constraint: optional site names

`slurm_resources` turns that into the resources snakemake-executor-plugin-slurm
reads; memory and runtime grow with the attempt, so `--retries` helps a job that
hit its limits. `command` is the one place that decides how a stage starts:
- one process: `python -m peftlab.<stage> ...`;
- several GPUs on one node: `torchrun --standalone --nproc-per-node G -m peftlab.<stage> ...`;
- several nodes (the plugin's MPI path, one task per node): `srun` starts one
  torchrun per node, with c10d rendezvous on the first host of the allocation.

Pure functions: nothing here imports torch or talks to Slurm.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, replace

RDZV_PORT = 29500


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

    @property
    def procs_per_node(self) -> int:
        """Training processes per node: one per GPU, or one on a CPU node."""
        return max(self.gpus, 1)

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    @property
    def cpus_per_task(self) -> int:
        return self.gpus * self.cpus_per_gpu if self.gpus else self.threads


PRESETS: dict[str, Resources] = {
    "tiny": Resources(threads=1, mem_mb=2000, runtime=30),  # CPU smoke tests
    "cpu": Resources(threads=4, mem_mb=16000, runtime=120),
    "1gpu": Resources(gpus=1, cpus_per_gpu=8, mem_mb=64000, runtime=720),
    "4gpu": Resources(gpus=4, cpus_per_gpu=8, mem_mb=256000, runtime=1440),
    "2x4gpu": Resources(gpus=4, nodes=2, cpus_per_gpu=8, mem_mb=256000, runtime=1440),
}


def resolve(value: str | dict | None, base: Resources = Resources()) -> Resources:
    """A config's resources value (a preset name, or keys over `base`, which may name a `preset`)."""
    if value is None:
        return base
    if isinstance(value, str):
        value = {"preset": value}
    value = dict(value)
    if "preset" in value:
        name = value.pop("preset")
        if name not in PRESETS:
            raise ValueError(f"unknown resources preset {name!r}; allowed: {', '.join(PRESETS)}")
        base = PRESETS[name]
    return replace(base, **value)


def slurm_resources(r: Resources, attempt: int = 1) -> dict:
    """The snakemake slurm plugin's resources for one job; memory and runtime scale with the attempt."""
    out = {"mem_mb": r.mem_mb * attempt, "runtime": r.runtime * attempt, "cpus_per_task": r.cpus_per_task}
    if r.gpus:
        out["gpu"] = r.gpus
        if r.gpu_model:
            out["gpu_model"] = r.gpu_model
    if r.constraint:
        out["constraint"] = r.constraint
    if r.nodes > 1:  # the MPI path: the rule's shell runs once in the allocation and starts a launcher per node
        out.update(nodes=r.nodes, tasks=r.nodes, mpi="srun")
    return out


def command(r: Resources, stage: str, args: list[str]) -> str:
    """The shell command that starts `python -m peftlab.<stage> args` on the resources `r`."""
    module = ["-m", f"peftlab.{stage}", *args]
    if r.nodes == 1 and r.procs_per_node == 1:
        return shlex.join(["python", *module])
    if r.nodes == 1:
        return shlex.join(["torchrun", "--standalone", f"--nproc-per-node={r.procs_per_node}", *module])
    launcher = [
        "torchrun",
        f"--nnodes={r.nodes}",
        f"--nproc-per-node={r.procs_per_node}",
        "--rdzv-backend=c10d",
        '--rdzv-id="$SLURM_JOB_ID"',
    ]
    # the first host of the allocation hosts the rendezvous; SLURM_* variables other than the
    # job id are stripped by the plugin's job step, so the node list is asked of Slurm
    first_host = 'scontrol show hostnames "$(squeue -h -j "$SLURM_JOB_ID" -o %N)" | head -n 1'
    return (
        f'RDZV_HOST=$({first_host}) && srun --jobid="$SLURM_JOB_ID" --nodes={r.nodes} --ntasks={r.nodes} --ntasks-per-node=1 '
        + " ".join(launcher)
        + f' --rdzv-endpoint="$RDZV_HOST:{RDZV_PORT}" '
        + shlex.join(module)
    )


def as_dict(r: Resources) -> dict:
    return asdict(r)
