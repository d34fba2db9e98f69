# A learning-rate search (peftlab.lr_search): one selection per cell, from its search runs'
# scores on the validation share; the cell's final runs train at the rate it picks.


rule lr_select:
    input:
        spec=spec("lr_select", "{cell}"),
        records=search_records,
    output:
        paths.lr_choice(ROOT, "{cell}"),
    log:
        paths.log(ROOT, "lr_select", "{cell}"),
    localrule: True
    conda:
        ENV
    shell:
        "python -m peftlab.lr_search --spec {input.spec} --out {output} {input.records} > {log} 2>&1"
