rule data_generate:
    output:
        directory(paths.raw(ROOT, "{task}")),
    log:
        paths.log(ROOT, "data_generate", "{task}"),
    conda:
        ENV
    params:
        **spec_params("data_generate", "{task}"),
    shell:
        WRITE_SPEC
        + "python -m peftlab.data generate --spec {params.spec_file} --out {output} > {log} 2>&1"


rule model_build:
    input:
        corpus=lambda wc: task_data(CFG["models"][wc.model]["build"]["corpus_task"]),
    output:
        directory(paths.model(ROOT, "{model}")),
    log:
        paths.log(ROOT, "model_build", "{model}"),
    benchmark:
        paths.benchmark(ROOT, "model_build", "{model}")
    conda:
        ENV
    params:
        **spec_params("model_build", "{model}"),
    shell:
        WRITE_SPEC
        + "python -m peftlab.build --spec {params.spec_file} --out {output} --threads {threads} > {log} 2>&1"


rule data_tokenize:
    input:
        data=lambda wc: task_data(wc.task),
        model=lambda wc: built_model(wc.model),
    output:
        directory(paths.data(ROOT, "{task}", "{model}")),
    log:
        paths.log(ROOT, "data_tokenize", "{task}/{model}"),
    benchmark:
        paths.benchmark(ROOT, "data_tokenize", "{task}/{model}")
    conda:
        ENV
    params:
        **spec_params("data_tokenize", "{task}/{model}"),
    shell:
        WRITE_SPEC
        + "python -m peftlab.data tokenize --spec {params.spec_file} --out {output} > {log} 2>&1"
