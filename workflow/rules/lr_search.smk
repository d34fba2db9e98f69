# A learning-rate search (peftlab.lr_search): one selection per cell, from its search runs'
# scores on the validation share; the cell's final runs train at the rate it picks.


rule lr_select:
    input:
        records=search_records,
    output:
        paths.lr_choice(ROOT, "{cell}"),
    log:
        paths.log(ROOT, "lr_select", "{cell}"),
    localrule: True
    conda:
        ENV
    params:
        **spec_params("lr_select", "{cell}"),
    shell:
        WRITE_SPEC
        + "python -m peftlab.lr_search --spec {params.spec_file} --out {output} {input.records} > {log} 2>&1"
