rule data_generate:
    input:
        spec=spec("data_generate", "{task}"),
    output:
        directory(f"{ROOT}/raw/{{task}}"),
    log:
        f"{ROOT}/logs/data_generate/{{task}}.log",
    conda:
        ENV
    shell:
        "python -m peftlab.data generate --spec {input.spec} --out {output} > {log} 2>&1"


rule model_build:
    input:
        spec=spec("model_build", "{model}"),
        corpus=lambda wc: task_data(CFG["models"][wc.model]["build"]["corpus_task"]),
    output:
        directory(f"{ROOT}/models/{{model}}"),
    log:
        f"{ROOT}/logs/model_build/{{model}}.log",
    benchmark:
        f"{ROOT}/benchmarks/model_build/{{model}}.tsv"
    conda:
        ENV
    shell:
        "python -m peftlab.models build --spec {input.spec} --out {output} --threads {threads} > {log} 2>&1"


rule data_tokenize:
    input:
        spec=spec("data_tokenize", "{task}/{model}"),
        data=lambda wc: task_data(wc.task),
        model=lambda wc: built_model(wc.model),
    output:
        directory(f"{ROOT}/data/{{task}}/{{model}}"),
    log:
        f"{ROOT}/logs/data_tokenize/{{task}}/{{model}}.log",
    benchmark:
        f"{ROOT}/benchmarks/data_tokenize/{{task}}/{{model}}.tsv"
    conda:
        ENV
    shell:
        "python -m peftlab.data tokenize --spec {input.spec} --out {output} > {log} 2>&1"
