# Validate the config and expand the matrix. Nothing is written while the workflow is
# parsed (a dry run, or a command refused by the lock, leaves results/ alone).
#
# Each stage reads its own spec file, <root>/specs/<rule>/<key>.json, which its job writes
# as it starts (`spec_params`). The stage reruns when its fingerprint changes (the hash of
# what it reads: peftlab.spec.NOT_READ lists the keys it ignores), through Snakemake's params
# rerun trigger; its newer outputs then rerun what follows. So editing a learning rate
# retrains one run, and editing max_new_tokens re-evaluates it without retraining. No job
# exists per spec file: planning costs the work's jobs only.
import functools
import json
from pathlib import Path

from peftlab import launch, paths
from peftlab import search as lr_search
from peftlab.matrix import plan
from peftlab.schema import ConfigError, load_yaml
from peftlab.validate import data_files, reference_files
from peftlab.spec import fingerprint

try:
    # Snakemake's YAML reader keeps the last of two equal keys; ours refuses them
    for _file in workflow.configfiles:
        load_yaml(_file)
    _CONFIGFILE = (
        workflow.configfiles[-1] if workflow.configfiles else "config/config.yaml"
    )
    CFG, RUNS, SPECS, RESOURCES, ROOT = plan(config, _CONFIGFILE)
except ConfigError as e:
    raise WorkflowError(str(e)) from None

# Packing (docs/slurm.md, "Packing short runs into fewer Slurm jobs"): `--group-components run=N`
# puts the train, evaluate and merge jobs of N runs into one sbatch call. Each resource
# class is a group of its own (peftlab.launch.pack_group), which --group-components
# counts as `run`; so a matrix of CPU and GPU runs packs each kind apart.
GROUPS = launch.pack_groups(RESOURCES)
for _group in set(GROUPS.values()) - {None}:
    workflow.parent_groupids[_group] = launch.PACK

ENV = "../../envs/peftlab.yaml"
# the runs a matrix reports (a learning-rate search's runs only feed its selections)
FINAL = [run_id for run_id, r in RUNS.items() if r["holdout"] is None]


# run ids by their shape (task/model/method/settings, or task/model/name), not as a list:
# an alternation of every run id made matching a path cost O(runs)
wildcard_constraints:
    run_id=paths.RUN_ID,
    cell=paths.RUN_ID,
    task="[A-Za-z0-9][A-Za-z0-9._+-]*",
    model="[A-Za-z0-9][A-Za-z0-9._+-]*",


@functools.cache
def packing():
    """Whether runs are packed; refuses what packing cannot run (peftlab.launch.check_packing).

    Asked per job: Snakemake sets its group settings only after parsing the workflow.
    """
    on = launch.PACK in workflow.group_settings.group_components
    caps = {k: r.value for k, r in workflow.global_resources.items() if k[0] != "_"}
    try:
        launch.check_packing(
            RESOURCES, workflow.group_settings.overwrite_groups, caps if on else {}
        )
    except launch.ResourcesError as e:
        raise WorkflowError(str(e)) from None
    return on


def run_of(wc):
    """The spec of a job's run: a clear error for a path that names no run of this matrix."""
    packing()
    if wc.run_id not in RUNS:
        raise WorkflowError(
            f"{wc.run_id!r} is not a run of {ROOT} ({len(RUNS)} runs); "
            f"`python -m peftlab.config {_CONFIGFILE}` lists them"
        )
    return RUNS[wc.run_id]


def lr_choice(wc):
    """The selection a final run of a learning-rate search trains at (none for other runs)."""
    search = run_of(wc)["lr_search"]
    return [paths.lr_choice(ROOT, search["cell"])] if search else []


def promotion(wc):
    """The promotion a halving search's run above rung 0 reads (peftlab.search; none for other runs)."""
    rung = run_of(wc)["rung"]
    if not rung or rung["index"] == 0:
        return []
    return [
        paths.lr_choice(
            ROOT, lr_search.rung_key(rung["search"]["cell"], rung["index"] - 1)
        )
    ]


def search_args(wc, input):
    """train's flags from a learning-rate search: a final run's selection (--lr-from); a halving search's run above
    rung 0: its promotion and the checkpoint folder it resumes. (One param, so the rule's shell text is as it was
    before halving: Snakemake reruns a job whose shell text changed.)"""
    if input.lr:
        return f"--lr-from {input.lr}"
    if not input.promotion:
        return ""
    below = lr_search.below(wc.run_id, RUNS[wc.run_id]["rung"]["index"])
    return (
        f"--promotion {input.promotion} --resume-rung {paths.checkpoints(ROOT, below)}"
    )


def search_records(wc):
    """The eval.json of every search run of a cell: what its selection reads."""
    return [paths.eval_record(ROOT, r) for r in SPECS["lr_select"][wc.cell]["runs"]]


class SpecText:
    """A stage's spec, as the JSON text its job writes to its spec file.

    Not a str: Snakemake's params rerun trigger compares only params of Python's own types,
    so the spec's text reruns nothing by itself; the `fingerprint` param beside it does.
    """

    def __init__(self, spec):
        self.text = json.dumps(spec, sort_keys=True)

    def __str__(self):
        return self.text


def spec_params(stage, key):
    """A stage rule's params: its spec file, the spec the job writes there (WRITE_SPEC), and the
    fingerprint that reruns it. `key` holds wildcards, e.g. '{run_id}'."""
    spec_of = lambda wc: SPECS[stage][key.format(**wc)]  # noqa: E731
    return {
        "spec_file": paths.spec(ROOT, stage, key),
        "spec": lambda wc: SpecText(spec_of(wc)),
        "fingerprint": lambda wc: fingerprint(spec_of(wc), stage),
    }


# what a stage's shell command starts with: its job writes the spec file the stage reads
WRITE_SPEC = "mkdir -p $(dirname {params.spec_file}) && printf '%s\\n' {params.spec:q} > {params.spec_file} && "


def built_model(model):
    """The model folder a rule must wait for, if the pipeline builds that model."""
    return [paths.model(ROOT, model)] if "build" in CFG["models"][model] else []


def task_data(task):
    """Files a task's raw data comes from: the generated folder or the user's files."""
    data = CFG["tasks"][task]["data"]
    if "generator" in data:
        return [paths.raw(ROOT, task)]
    return list(data_files(CFG["tasks"][task]).values())


def reference_data(wc):
    """What a run's forgetting measure reads besides its adapter (peftlab.forgetting): its task's reference file,
    or for `reference: {pretraining: true}` the built model's corpus data."""
    run = run_of(wc)
    task = CFG["tasks"][run["task"]["name"]]
    if (task["reference"] or {}).get("pretraining"):
        return task_data(CFG["models"][run["model"]["name"]]["build"]["corpus_task"])
    return reference_files(task)


def stage_resources(stage):
    """A run rule's resources (peftlab.launch.rule_resources: constants where every run agrees)."""
    return launch.rule_resources(RESOURCES, stage, packing)


def run_group(wc):
    """A run job's group when packing: its resource class (none for a multi-node run)."""
    return GROUPS.get(wc.run_id) if packing() else None


def stage_threads(stage):
    return launch.rule_threads(RESOURCES, stage)


def run_labels(wildcards):
    """A run's labels in the Snakemake report: its task, model, method, rank, seed and plot."""
    r = RUNS[wildcards.run_id]
    return {
        "task": r["task"]["name"],
        "model": r["model"]["name"],
        "method": r["peft"]["type"],
        "rank": str(r["peft"]["r"]) if r["peft"]["r"] is not None else "-",
        "seed": str(r["training"]["seed"]),
        "plot": wildcards.plot,
    }


def in_report(path, caption, category, labels):
    """`path`, flagged for `snakemake --report` with workflow/report/<caption>.rst."""
    return report(
        path, caption=f"../report/{caption}.rst", category=category, labels=labels
    )
