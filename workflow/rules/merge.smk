rule merge_run:
    input:
        spec=spec("merge_run", "{run_id}"),
        adapter=f"{ROOT}/runs/{{run_id}}/adapter",
    output:
        merged=directory(f"{ROOT}/runs/{{run_id}}/merged"),
        check=f"{ROOT}/runs/{{run_id}}/merge_check.json",
    log:
        f"{ROOT}/logs/merge_run/{{run_id}}.log",
    benchmark:
        f"{ROOT}/benchmarks/merge_run/{{run_id}}.tsv"
    conda:
        ENV
    threads: stage_threads("merge")
    resources:
        **stage_resources("merge"),
    shell:
        "python -m peftlab.merge --spec {input.spec} --adapter {input.adapter} --merged {output.merged}"
        " --check {output.check} --threads {threads} > {log} 2>&1"
