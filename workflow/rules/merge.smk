rule merge_run:
    input:
        adapter=paths.adapter(ROOT, "{run_id}"),
    output:
        merged=directory(paths.merged(ROOT, "{run_id}")),
        check=paths.merge_check(ROOT, "{run_id}"),
    log:
        paths.log(ROOT, "merge_run", "{run_id}"),
    benchmark:
        paths.benchmark(ROOT, "merge_run", "{run_id}")
    group:
        run_group
    conda:
        ENV
    threads: stage_threads("merge")
    resources:
        **stage_resources("merge"),
    params:
        **spec_params("merge_run", "{run_id}"),
    shell:
        WRITE_SPEC
        + "python -m peftlab.merge --spec {params.spec_file} --adapter {input.adapter} --merged {output.merged}"
        " --check {output.check} --threads {threads} > {log} 2>&1"
