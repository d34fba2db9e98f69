TABLES = multiext(
    f"{paths.tables(ROOT)}/summary", ".csv", "_grouped.csv", ".md", ".tex"
)
RUN_DIRS = [paths.run(ROOT, run_id) for run_id in RUNS]
# peftlab.tracking.report.matrix: the methods compared by what their adapters changed
TRACKING_TABLES = (
    multiext(
        f"{paths.tables(ROOT)}/tracking",
        ".csv",
        "_grouped.csv",
        ".md",
        "_alignment.png",
        "_effective_rank.png",
        "_depth.png",
    )
    if any(r["tracker"]["enable_spectral_tracking"] for r in RUNS.values())
    else []
)


rule tables_build:
    input:
        [f"{run}/{output}" for run in RUN_DIRS for _, output in paths.RUN_OUTPUTS],
    output:
        TABLES,
        f"{paths.tables(ROOT)}/metrics.png",
        f"{paths.tables(ROOT)}/loss.png",
        TRACKING_TABLES,
    log:
        paths.log(ROOT, "tables_build", "tables"),
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
        paths.log(ROOT, "tables", "tables"),
    localrule: True
    conda:
        ENV
    params:
        runs=RUN_DIRS,
        out=paths.tables(ROOT),
    shell:
        "python -m peftlab.tables --out {params.out} {params.runs} > {log} 2>&1"


# A run failed (the default profile keeps going past it): once every other job is done,
# the tables list every run with its status and the first line of each failure.
onerror:
    if RUNS:
        ONERROR_LOG = paths.log(ROOT, "tables", "onerror")
        TABLES_DIR = paths.tables(ROOT)
        shell(
            "mkdir -p $(dirname {ONERROR_LOG}) && python -m peftlab.tables --out {TABLES_DIR} {RUN_DIRS}"
            " > {ONERROR_LOG} 2>&1 || true"
        )
