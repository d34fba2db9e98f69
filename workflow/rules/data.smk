rule data_generate:
    input:
        spec=spec("data_generate", "{task}"),
    output:
        directory(paths.raw(ROOT, "{task}")),
    log:
        paths.log(ROOT, "data_generate", "{task}"),
    conda:
        ENV
    shell:
        "python -m peftlab.data generate --spec {input.spec} --out {output} > {log} 2>&1"


rule model_build:
    input:
        spec=spec("model_build", "{model}"),
        corpus=lambda wc: task_data(CFG["models"][wc.model]["build"]["corpus_task"]),
    output:
        directory(paths.model(ROOT, "{model}")),
    log:
        paths.log(ROOT, "model_build", "{model}"),
    benchmark:
        paths.benchmark(ROOT, "model_build", "{model}")
    conda:
        ENV
    shell:
        "python -m peftlab.build --spec {input.spec} --out {output} --threads {threads} > {log} 2>&1"


rule data_tokenize:
    input:
        spec=spec("data_tokenize", "{task}/{model}"),
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
    shell:
        "python -m peftlab.data tokenize --spec {input.spec} --out {output} > {log} 2>&1"
