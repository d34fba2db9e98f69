TABLES_DIR = paths.tables(ROOT)
TABLES = [
    in_report(
        f"{TABLES_DIR}/{name}", "summary", "Tables", {"task": "all", "format": name}
    )
    for name in (
        "summary.csv",
        "summary_grouped.csv",
        "summary.md",
        "summary.tex",
        "comparisons.csv",
    )
]
RUN_DIRS = [paths.run(ROOT, run_id) for run_id in FINAL]
TASKS = sorted({RUNS[r]["task"]["name"] for r in FINAL})
# learning-rate searches: every cell's selection, tabulated as best_lr.csv/.md and plotted
LR_CHOICES = [  # each cell's selection (a halving search's promotions feed its runs only)
    paths.lr_choice(ROOT, cell)
    for cell, s in SPECS["lr_select"].items()
    if "rung" not in s
]
LR_TABLES = (
    [
        in_report(f"{TABLES_DIR}/{name}", "lr_search", "Learning rates", {"plot": name})
        for name in ("best_lr.csv", "best_lr.md", "lr_search.png")
    ]
    if LR_CHOICES
    else []
)
# peftlab.tracking.report.matrix: the methods compared by what their adapters changed
TRACKING_TABLES = (
    [
        in_report(f"{TABLES_DIR}/{name}", "tracking", "Tracking", {"plot": name})
        for name in ("tracking.csv", "tracking_grouped.csv", "tracking.md")
    ]
    + [
        in_report(
            f"{TABLES_DIR}/tracking_{plot}.png", "tracking", "Tracking", {"plot": plot}
        )
        for plot in ("alignment", "effective_rank", "intruders", "depth")
    ]
    if any(RUNS[r]["tracker"]["enable_spectral_tracking"] for r in FINAL)
    else []
)


rule tables_build:
    input:
        [f"{run}/{output}" for run in RUN_DIRS for _, output in paths.RUN_OUTPUTS],
        [paths.predictions(ROOT, run_id) for run_id in FINAL],
        LR_CHOICES,
    output:
        TABLES,
        [
            report(
                f"{TABLES_DIR}/tasks/{task}.{ext}",
                caption="../report/task_table.rst",
                category="Tables",
                labels={"task": task, "format": ext},
            )
            for task in TASKS
            for ext in ("csv", "md", "tex")
        ],
        report(
            directory(f"{TABLES_DIR}/plots"),
            patterns=["{task}/{model}/{plot}.png"],
            caption="../report/plots.rst",
            category="Plots",
            subcategory="{task}",
            labels={"task": "{task}", "model": "{model}", "plot": "{plot}"},
        ),
        report(
            f"{TABLES_DIR}/metrics.png",
            caption="../report/overview.rst",
            category="Overview",
            labels={"plot": "metrics"},
        ),
        report(
            f"{TABLES_DIR}/loss.png",
            caption="../report/overview.rst",
            category="Overview",
            labels={"plot": "loss"},
        ),
        TRACKING_TABLES,
        LR_TABLES,
    log:
        paths.log(ROOT, "tables_build", "tables"),
    localrule: True
    conda:
        ENV
    params:
        runs=RUN_DIRS,
        out=lambda wc, output: str(Path(output[0]).parent),
        reference=CFG["tables"]["reference"],
        flagged="--include-flagged" if CFG["tables"]["include_flagged"] else "",
        lr=f"--lr-search {' '.join(LR_CHOICES)}" if LR_CHOICES else "",
    shell:
        "python -m peftlab.tables --out {params.out} --reference {params.reference} {params.flagged} {params.runs} {params.lr} > {log} 2>&1"


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
        out=TABLES_DIR,
        reference=CFG["tables"]["reference"],
        flagged="--include-flagged" if CFG["tables"]["include_flagged"] else "",
        lr=f"--lr-search {' '.join(LR_CHOICES)}" if LR_CHOICES else "",
    shell:
        "python -m peftlab.tables --out {params.out} --reference {params.reference} {params.flagged} {params.runs} {params.lr} > {log} 2>&1"


# A run failed (the default profile keeps going past it): once every other job is done,
# the tables list every run with its status and the first line of each failure.
onerror:
    if FINAL:
        ONERROR_LOG = paths.log(ROOT, "tables", "onerror")
        REFERENCE = CFG["tables"]["reference"]
        FLAGGED = "--include-flagged" if CFG["tables"]["include_flagged"] else ""
        shell(
            "mkdir -p $(dirname {ONERROR_LOG}) && python -m peftlab.tables --out {TABLES_DIR} --reference {REFERENCE} {FLAGGED} {RUN_DIRS}"
            " > {ONERROR_LOG} 2>&1 || true"
        )
