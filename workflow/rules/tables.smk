TABLES = multiext(f"{ROOT}/tables/summary", ".csv", "_grouped.csv", ".md", ".tex")
RUN_DIRS = expand(f"{ROOT}/runs/{{run_id}}", run_id=RUNS)


rule tables_build:
    input:
        expand(
            f"{ROOT}/runs/{{run_id}}/{{f}}",
            run_id=RUNS,
            f=["train.json", "eval.json", "merge_check.json"],
        ),
    output:
        TABLES,
        f"{ROOT}/tables/metrics.png",
        f"{ROOT}/tables/loss.png",
    log:
        f"{ROOT}/logs/tables_build/tables.log",
    localrule: True
    conda:
        ENV
    params:
        runs=RUN_DIRS,
        out=lambda wc, output: str(Path(output[0]).parent),
    shell:
        "python -m peftlab.tables --out {params.out} {params.runs} > {log} 2>&1"


# `snakemake tables`: rebuild the tables from the runs that have finished, training nothing;
# runs that failed or have not run are listed with their status.
rule tables:
    log:
        f"{ROOT}/logs/tables/tables.log",
    localrule: True
    conda:
        ENV
    params:
        runs=RUN_DIRS,
        out=f"{ROOT}/tables",
    shell:
        "python -m peftlab.tables --out {params.out} {params.runs} > {log} 2>&1"


# A run failed (the default profile keeps going past it): once every other job is done,
# the tables list every run with its status and the first line of each failure.
onerror:
    if RUNS:
        shell(
            "mkdir -p {ROOT}/logs && python -m peftlab.tables --out {ROOT}/tables {RUN_DIRS}"
            " > {ROOT}/logs/tables_onerror.log 2>&1 || true"
        )
