# Datasets: synthesised in each real dataset's on-disk layout (smoke) or downloaded and verified (paper).


rule synthesize_dataset:
    output:
        directory("data/synthetic/{dataset}"),
    log:
        "logs/data/synthetic/{dataset}.log",
    conda:
        "../../envs/data.yaml"
    params:
        spec=lambda wc: as_json(plan.dataset_spec(config, wc.dataset)),
    shell:
        "python -m imagekv synthesize --spec {params.spec:q} --output {output:q} > {log:q} 2>&1"


rule download_dataset:
    output:
        directory("data/real/{dataset}"),
    log:
        "logs/data/real/{dataset}.log",
    retries: 2
    conda:
        "../../envs/data.yaml"
    params:
        spec=lambda wc: as_json(plan.download_spec(config, wc.dataset)),
    shell:
        "python -m imagekv download --spec {params.spec:q} --output {output:q} > {log:q} 2>&1"
