TABLES = multiext("results/tables/summary", ".csv", "_grouped.csv", ".md", ".tex")
RUN_DIRS = expand("results/runs/{run_id}", run_id=RUNS)


rule tables_build:
    input:
        expand(
            "results/runs/{run_id}/{f}",
            run_id=RUNS,
            f=["train.json", "eval.json", "merge_check.json"],
        ),
    output:
        TABLES,
        "results/tables/metrics.png",
        "results/tables/loss.png",
    log:
        "results/logs/tables_build/tables.log",
    localrule: True
    conda:
        ENV
    params:
        runs=RUN_DIRS,
    shell:
        "python -m peftlab.tables --out results/tables {params.runs} > {log} 2>&1"


# `snakemake tables`: rebuild the tables from the runs that have finished, training nothing.
rule tables:
    log:
        "results/logs/tables/tables.log",
    localrule: True
    conda:
        ENV
    params:
        runs=RUN_DIRS,
    shell:
        "python -m peftlab.tables --out results/tables {params.runs} > {log} 2>&1"
