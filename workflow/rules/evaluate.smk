rule evaluate_run:
    input:
        spec=spec("evaluate_run", "{run_id}"),
        adapter=f"{ROOT}/runs/{{run_id}}/adapter",
    output:
        f"{ROOT}/runs/{{run_id}}/eval.json",
    log:
        f"{ROOT}/logs/evaluate_run/{{run_id}}.log",
    benchmark:
        f"{ROOT}/benchmarks/evaluate_run/{{run_id}}.tsv"
    conda:
        ENV
    threads: stage_threads("evaluate")
    resources:
        **stage_resources("evaluate"),
    shell:
        "python -m peftlab.evaluate --spec {input.spec} --adapter {input.adapter} --out {output}"
        " --threads {threads} > {log} 2>&1"
