rule train_run:
    input:
        spec="results/specs/runs/{run_id}.json",
        data=lambda wc: RUNS[wc.run_id]["data_dir"],
        model=lambda wc: built_model(RUNS[wc.run_id]["model"]["name"]),
    output:
        adapter=directory("results/runs/{run_id}/adapter"),
        record="results/runs/{run_id}/train.json",
    log:
        "results/logs/train_run/{run_id}.log",
    benchmark:
        "results/benchmarks/train_run/{run_id}.tsv"
    conda:
        ENV
    threads: stage_threads("train")
    resources:
        **stage_resources("train"),
    params:
        # python, torchrun, or srun + torchrun per node: peftlab.launch.launcher
        launcher=lambda wc: launch.launcher(RESOURCES[wc.run_id], "train"),
        # outside every declared output: Snakemake deletes those before a rerun
        checkpoints="results/checkpoints/{run_id}",
    shell:
        "{params.launcher} --spec {input.spec} --adapter {output.adapter} --record {output.record}"
        " --checkpoints {params.checkpoints} --threads {threads} > {log} 2>&1"
