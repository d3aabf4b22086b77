# Datasets: synthesised in each real dataset's published layout (smoke), downloaded and verified into
# that layout (paper), or a copy the user already has (`source: local`), checked before first use.


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


rule check_local_dataset:
    output:
        plan.local_check_path("{dataset}"),
    log:
        "logs/data/local/{dataset}.log",
    conda:
        "../../envs/data.yaml"
    params:
        spec=lambda wc: as_json(plan.check_spec(config, wc.dataset)),
    shell:
        "python -m imagekv check-dataset --spec {params.spec:q} --output {output:q} > {log:q} 2>&1"
