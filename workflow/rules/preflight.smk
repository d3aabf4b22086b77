# The preflight: on CPU, before any GPU time, every prompt of the run built with each checkpoint's
# real non-weight files (downloaded at the pinned revision, or preflight.local_files) and checked:
# template, image-token counts, grids, context. Every MLM GPU job waits for its report, as an ancient()
# input: a rerun of the preflight (its part of the config changed) does not rerun them.


rule preflight:
    input:
        plan.preflight_inputs(config),
    output:
        plan.preflight_path("{run}"),
    log:
        "logs/{run}/preflight.log",
    conda:
        "../../envs/models.yaml"
    params:
        spec=lambda wc: as_json(plan.preflight_spec(config)),
    shell:
        "python -m imagekv preflight --spec {params.spec:q} --output {output:q} > {log:q} 2>&1"
