rule evaluate_run:
    input:
        spec="results/specs/runs/{run_id}.json",
        adapter="results/runs/{run_id}/adapter",
    output:
        "results/runs/{run_id}/eval.json",
    log:
        "results/logs/evaluate_run/{run_id}.log",
    benchmark:
        "results/benchmarks/evaluate_run/{run_id}.tsv"
    conda:
        ENV
    threads: stage_threads("evaluate")
    resources:
        **stage_resources("evaluate"),
    shell:
        "python -m peftlab.evaluate --spec {input.spec} --adapter {input.adapter} --out {output}"
        " --threads {threads} > {log} 2>&1"
