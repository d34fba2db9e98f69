# Validate the config, expand the matrix, and sync one spec file per step.
# A spec file is rewritten only when its content changes, so editing one run's
# hyperparameters reruns exactly that run (Snakemake sees a newer input).
import re

from peftlab import artifacts, launch
from peftlab.config import ConfigError, data_files, plan

try:
    CFG, RUNS, SPECS, RESOURCES = plan(config)
except ConfigError as e:
    raise WorkflowError(str(e)) from None

for _key, _spec in SPECS.items():
    artifacts.write_json_if_changed(f"results/specs/{_key}.json", _spec)

ENV = "../../envs/peftlab.yaml"


wildcard_constraints:
    run_id="|".join(map(re.escape, RUNS)),
    task="[A-Za-z0-9][A-Za-z0-9._+-]*",
    model="[A-Za-z0-9][A-Za-z0-9._+-]*",


def built_model(model):
    """The model folder a rule must wait for, if the pipeline builds that model."""
    return [f"results/models/{model}"] if "build" in CFG["models"][model] else []


def task_data(task):
    """Files a task's raw data comes from: the generated folder or the user's files."""
    data = CFG["tasks"][task]["data"]
    if "generator" in data:
        return [f"results/raw/{task}"]
    return list(data_files(CFG["tasks"][task]).values())


def stage_resources(stage):
    """A run rule's resources: one function per key peftlab.launch.slurm_resources may set
    (None leaves a key unset), from the run's resources and the attempt number."""
    return {
        key: lambda wc, attempt, key=key: launch.slurm_resources(
            launch.for_stage(RESOURCES[wc.run_id], stage), attempt
        ).get(key)
        for key in launch.SLURM_KEYS
    }


def stage_threads(stage):
    return lambda wc: launch.for_stage(RESOURCES[wc.run_id], stage).cpus_per_task
