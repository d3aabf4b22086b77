# KV extraction: one forward pass per image; image keys/values of the selected LM layers and the
# projector output, stored as fp16 safetensors shards. Resumes after a crash. Eligible for
# Snakemake's between-workflow cache (`--cache`, see the README): its key covers this command, the
# job spec and the upstream data steps.


rule extract_features:
    input:
        dataset=dataset_input,
        preflight=lambda wc: [
            ancient(p) for p in plan.preflight_inputs_of(config, wc.backbone)
        ],
    output:
        directory(plan.features_path("{run}", "{backbone}", "{dataset}", "{prefix}")),
    log:
        "logs/{run}/extract/{backbone}/{dataset}/{prefix}.log",
    cache: True
    conda:
        "../../envs/models.yaml"
    threads: MODEL_THREADS
    resources:
        gpu=1,
    params:
        spec=lambda wc: as_json(
            plan.extraction_spec(config, wc.backbone, wc.dataset, wc.prefix)
        ),
    shell:
        "python -m imagekv extract --spec {params.spec:q} --output {output:q}"
        " --threads {threads} > {log:q} 2>&1"


# E5 per-item prefixes: one forward per text query, its image after its own prefix and its query
# after the image (imagekv.prefixes); the same command, a per-item spec.
use rule extract_features as extract_item_features with:
    output:
        directory(
            plan.item_features_path("{run}", "{backbone}", "{dataset}", "{prefix}")
        ),
    log:
        "logs/{run}/extract_items/{backbone}/{dataset}/{prefix}.log",
    params:
        spec=lambda wc: as_json(
            plan.item_extraction_spec(config, wc.backbone, wc.dataset, wc.prefix)
        ),
