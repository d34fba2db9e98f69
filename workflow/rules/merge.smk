rule merge_run:
    input:
        spec="results/specs/runs/{run_id}.json",
        adapter="results/runs/{run_id}/adapter",
    output:
        merged=directory("results/runs/{run_id}/merged"),
        check="results/runs/{run_id}/merge_check.json",
    log:
        "results/logs/merge_run/{run_id}.log",
    benchmark:
        "results/benchmarks/merge_run/{run_id}.tsv"
    conda:
        ENV
    threads: stage_threads("merge")
    resources:
        **stage_resources("merge"),
    shell:
        "python -m peftlab.merge --spec {input.spec} --adapter {input.adapter} --merged {output.merged}"
        " --check {output.check} --threads {threads} > {log} 2>&1"
