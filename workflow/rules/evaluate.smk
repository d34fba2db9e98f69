rule evaluate_run:
    input:
        adapter=paths.adapter(ROOT, "{run_id}"),
        # the task's reference texts for the forgetting measure: editing the file re-evaluates
        reference=reference_data,
    output:
        record=paths.eval_record(ROOT, "{run_id}"),
        # one row per held-out example: what the tables' paired tests read
        predictions=paths.predictions(ROOT, "{run_id}"),
    log:
        paths.log(ROOT, "evaluate_run", "{run_id}"),
    benchmark:
        paths.benchmark(ROOT, "evaluate_run", "{run_id}")
    group:
        run_group
    conda:
        ENV
    threads: stage_threads("evaluate")
    resources:
        **stage_resources("evaluate"),
    params:
        **spec_params("evaluate_run", "{run_id}"),
    shell:
        WRITE_SPEC
        + "python -m peftlab.evaluate --spec {params.spec_file} --adapter {input.adapter} --out {output.record}"
        " --predictions {output.predictions} --threads {threads} > {log} 2>&1"
