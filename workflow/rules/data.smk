rule data_generate:
    input:
        spec="results/specs/raw/{task}.json",
    output:
        directory("results/raw/{task}"),
    log:
        "results/logs/data_generate/{task}.log",
    conda:
        ENV
    shell:
        "python -m peftlab.data generate --spec {input.spec} --out {output} > {log} 2>&1"


rule model_build:
    input:
        spec="results/specs/models/{model}.json",
        corpus=lambda wc: task_data(CFG["models"][wc.model]["build"]["corpus_task"]),
    output:
        directory("results/models/{model}"),
    log:
        "results/logs/model_build/{model}.log",
    benchmark:
        "results/benchmarks/model_build/{model}.tsv"
    conda:
        ENV
    shell:
        "python -m peftlab.models build --spec {input.spec} --out {output} --threads {threads} > {log} 2>&1"


rule data_tokenize:
    input:
        spec="results/specs/data/{task}/{model}.json",
        data=lambda wc: task_data(wc.task),
        model=lambda wc: built_model(wc.model),
    output:
        directory("results/data/{task}/{model}"),
    log:
        "results/logs/data_tokenize/{task}/{model}.log",
    benchmark:
        "results/benchmarks/data_tokenize/{task}/{model}.tsv"
    conda:
        ENV
    shell:
        "python -m peftlab.data tokenize --spec {input.spec} --out {output} > {log} 2>&1"
