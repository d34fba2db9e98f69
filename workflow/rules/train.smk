rule train_run:
    input:
        data=lambda wc: run_of(wc)["data_dir"],
        model=lambda wc: built_model(run_of(wc)["model"]["name"]),
        # a final run of a learning-rate search: its cell's selection (peftlab.lr_search)
        lr=lr_choice,
        # a halving search's run above rung 0: the promotion that keeps or prunes its rate
        promotion=promotion,
    output:
        adapter=directory(paths.adapter(ROOT, "{run_id}")),
        # peftlab.tracking: what the adapter changed, layer by layer (the reason, when nothing to track)
        tracking=report(
            directory(paths.tracking(ROOT, "{run_id}")),
            patterns=["{plot}.png"],
            caption="../report/run_tracking.rst",
            category="Runs",
            subcategory=lambda wc: RUNS[wc.run_id]["task"]["name"],
            labels=run_labels,
        ),
        record=paths.train_record(ROOT, "{run_id}"),
    log:
        paths.log(ROOT, "train_run", "{run_id}"),
    benchmark:
        paths.benchmark(ROOT, "train_run", "{run_id}")
    group:
        run_group
    conda:
        ENV
    threads: stage_threads("train")
    resources:
        **stage_resources("train"),
    params:
        **spec_params("train_run", "{run_id}"),
        # python, torchrun, or srun + torchrun per node: peftlab.launch.launcher
        launcher=lambda wc: launch.launcher(RESOURCES[wc.run_id], "train"),
        # outside every declared output: Snakemake deletes those before a rerun
        checkpoints=paths.checkpoints(ROOT, "{run_id}"),
        # --lr-from for a final run of a search, --promotion and --resume-rung for a halving search's run above rung 0
        lr_from=search_args,
    shell:
        WRITE_SPEC
        + "{params.launcher} --spec {params.spec_file} --adapter {output.adapter} --tracking {output.tracking} --record {output.record}"
        " --checkpoints {params.checkpoints} {params.lr_from} --threads {threads} > {log} 2>&1"
