# peftlab: PEFT experiment matrices as a Snakemake workflow.
#
#   snakemake --cores 2                                   # the embedded default, config/config.yaml
#   snakemake --cores 2 --configfile config/test.yaml     # another matrix (replaces the default, never mixes)
#   snakemake -n                                          # the plan; --dag | dot -Tsvg > dag.svg to draw it
#   snakemake --cores 2 results/default/runs/<run_id>/eval.json   # exactly one experiment
#
# Every file of a matrix lies under results/<name>/ (name: the config's `name:` or its
# file's name; config/config.yaml is `default`), so matrices never write over each other.
#   snakemake --cores 1 tables                            # tables from finished runs, no training
#
# Rules only wire files to `python -m peftlab.<stage>`; the logic is in src/peftlab.
from snakemake.utils import min_version

min_version("9.0")


if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/merge.smk"
include: "workflow/rules/lr_search.smk"
include: "workflow/rules/tables.smk"


rule all:
    default_target: True
    input:
        [paths.eval_record(ROOT, run_id) for run_id in FINAL],
        [paths.merge_check(ROOT, run_id) for run_id in FINAL],
        f"{paths.tables(ROOT)}/summary.md",
