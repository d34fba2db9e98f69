rule merge_run:
    input:
        spec=spec("merge_run", "{run_id}"),
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
    shell:
        "python -m peftlab.merge --spec {input.spec} --adapter {input.adapter} --merged {output.merged}"
        " --check {output.check} --threads {threads} > {log} 2>&1"
