# Figures and tables: cheap rules that read the small tidy result tables, never the features.
# Each lists its plotting code as input, so restyling reruns exactly the plots that use it.

FIGURE_CODE = ["src/imagekv/figures/style.py"]


rule figure_layerwise_probes:
    input:
        results="results/{run}/probes.csv",
        code=FIGURE_CODE + ["src/imagekv/figures/layerwise.py"],
    output:
        pdf="figures/{run}/layerwise_probes.pdf",
        png=report(
            "figures/{run}/layerwise_probes.png",
            caption="../report/layerwise_probes.rst",
            category="Probes",
        ),
    log:
        "logs/{run}/figures/layerwise_probes.log",
    conda:
        "../../envs/plots.yaml"
    params:
        scale=config["scale"],
    shell:
        "python -m imagekv figure layerwise_probes --input {input.results:q}"
        " --run {wildcards.run} --scale {params.scale} --output {output.pdf:q} {output.png:q}"
        " > {log:q} 2>&1"


rule table_best_layers:
    input:
        results="results/{run}/probes.csv",
        code=FIGURE_CODE
        + ["src/imagekv/tables/__init__.py", "src/imagekv/tables/best_layers.py"],
    output:
        multiext("paper_tables/{run}/best_layers", ".csv", ".md", ".tex"),
    log:
        "logs/{run}/tables/best_layers.log",
    conda:
        "../../envs/plots.yaml"
    params:
        scale=config["scale"],
        stem="paper_tables/{run}/best_layers",
    shell:
        "python -m imagekv table best_layers --input {input.results:q}"
        " --run {wildcards.run} --scale {params.scale} --output {params.stem:q}"
        " > {log:q} 2>&1"
