# One spec file per stage and key, rewritten only when the stage's fingerprint changes
# (Snakemake's params rerun trigger): see common.smk and peftlab.spec.NOT_READ.


rule spec_write:
    output:
        paths.spec(ROOT, "{stage}", "{key}"),
    log:
        paths.log(ROOT, "spec_write", "{stage}/{key}"),
    localrule: True
    params:
        fingerprint=lambda wc: fingerprint(SPECS[wc.stage][wc.key], wc.stage),
    run:
        artifacts.write_spec(
            output[0],
            SPECS[wildcards.stage][wildcards.key],
            log[0],
            params.fingerprint,
        )
