# Probes: every layer of one (backbone, dataset, prefix, representation) at once, on stored features.


rule probe:
    input:
        features=plan.features_path("{run}", "{backbone}", "{dataset}", "{prefix}"),
        dataset=dataset_input,
    output:
        plan.probe_path(
            "{run}", "{backbone}", "{dataset}", "{prefix}", "{representation}"
        ),
    log:
        "logs/{run}/probe/{backbone}/{dataset}/{prefix}/{representation}.log",
    conda:
        "../../envs/probes.yaml"
    threads: 1
    params:
        spec=lambda wc: as_json(
            plan.probe_spec(
                config, wc.backbone, wc.dataset, wc.prefix, wc.representation
            )
        ),
    shell:
        "python -m imagekv probe --spec {params.spec:q} --features {input.features:q}"
        " --output {output:q} --threads {threads} > {log:q} 2>&1"


rule collect_probe_results:
    input:
        lambda wc: plan.probe_targets(config),
    output:
        "results/{run}/probes.csv",
    log:
        "logs/{run}/collect_probe_results.log",
    conda:
        "../../envs/plots.yaml"
    shell:
        "python -m imagekv collect --output {output:q} {input:q} > {log:q} 2>&1"


rule qualitative_examples:
    input:
        probes="results/{run}/probes.csv",
        stores=lambda wc: plan.qualitative_inputs(config),
    output:
        npz="results/{run}/qualitative/examples.npz",
        meta="results/{run}/qualitative/examples.json",
    log:
        "logs/{run}/qualitative_examples.log",
    conda:
        "../../envs/probes.yaml"
    threads: 1
    params:
        spec=lambda wc: as_json(plan.qualitative_spec(config)),
    shell:
        "python -m imagekv examples --spec {params.spec:q} --probes {input.probes:q}"
        " --output {output.npz:q} --threads {threads} > {log:q} 2>&1"
