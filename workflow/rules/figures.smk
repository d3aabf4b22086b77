# Figures and tables: cheap rules that read the small tidy result tables, never the features.
# Each lists its plotting code as input, so restyling reruns exactly the plots that use it.

from imagekv.tables.paper_comparison import result_tables

LABEL_CODE = ["src/imagekv/labels.py", "src/imagekv/pairing.py"]
FIGURE_CODE = LABEL_CODE + ["src/imagekv/figures/style.py"]
# Tables share the labels and the footer, not the figures' style: a restyle reruns no table.
TABLE_CODE = LABEL_CODE + ["src/imagekv/tables/__init__.py"]


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
        pairing=as_json(plan.reference_pairing(config)),
    shell:
        "python -m imagekv figure layerwise_probes --input {input.results:q}"
        " --option pairing={params.pairing:q}"
        " --run {wildcards.run} --scale {params.scale} --output {output.pdf:q} {output.png:q}"
        " > {log:q} 2>&1"


rule figure_task_curves:
    input:
        results="results/{run}/probes.csv",
        code=FIGURE_CODE
        + ["src/imagekv/figures/layerwise.py", "src/imagekv/figures/task_curves.py"],
    output:
        pdf="figures/{run}/task_curves_{task}.pdf",
        png=report(
            "figures/{run}/task_curves_{task}.png",
            caption="../report/task_curves.rst",
            category="Probes",
            subcategory="Per task (appendix)",
        ),
    log:
        "logs/{run}/figures/task_curves_{task}.log",
    wildcard_constraints:
        task="|".join(TASKS),
    conda:
        "../../envs/plots.yaml"
    params:
        scale=config["scale"],
        pairing=as_json(plan.reference_pairing(config)),
    shell:
        "python -m imagekv figure task_curves --input {input.results:q} --option task={wildcards.task}"
        " --option pairing={params.pairing:q}"
        " --run {wildcards.run} --scale {params.scale} --output {output.pdf:q} {output.png:q}"
        " > {log:q} 2>&1"


rule figure_qualitative_examples:
    input:
        examples="results/{run}/qualitative/examples.npz",
        meta="results/{run}/qualitative/examples.json",
        code=FIGURE_CODE + ["src/imagekv/figures/qualitative.py"],
    output:
        pdf="figures/{run}/qualitative_examples.pdf",
        png=report(
            "figures/{run}/qualitative_examples.png",
            caption="../report/qualitative_examples.rst",
            category="Probes",
        ),
    log:
        "logs/{run}/figures/qualitative_examples.log",
    conda:
        "../../envs/plots.yaml"
    params:
        scale=config["scale"],
    shell:
        "python -m imagekv figure qualitative_examples --input {input.examples:q}"
        " --run {wildcards.run} --scale {params.scale} --output {output.pdf:q} {output.png:q}"
        " > {log:q} 2>&1"


rule table_best_layers:
    input:
        results="results/{run}/probes.csv",
        code=TABLE_CODE + ["src/imagekv/tables/best_layers.py"],
    output:
        report(
            "paper_tables/{run}/best_layers.csv",
            caption="../report/best_layers.rst",
            category="Tables",
        ),
        "paper_tables/{run}/best_layers.md",
        "paper_tables/{run}/best_layers.tex",
    log:
        "logs/{run}/tables/best_layers.log",
    conda:
        "../../envs/plots.yaml"
    params:
        scale=config["scale"],
        pairing=as_json(plan.reference_pairing(config)),
        stem="paper_tables/{run}/best_layers",
    shell:
        "python -m imagekv table best_layers --input {input.results:q}"
        " --option pairing={params.pairing:q}"
        " --run {wildcards.run} --scale {params.scale} --output {params.stem:q}"
        " > {log:q} 2>&1"


rule table_paper_comparison:
    input:
        reported="config/paper_reported.yaml",
        # the tidy result tables the file points into
        results=lambda wc: result_tables("config/paper_reported.yaml", wc.run),
        code=TABLE_CODE + ["src/imagekv/tables/paper_comparison.py"],
    output:
        report(
            "paper_tables/{run}/paper_comparison.csv",
            caption="../report/paper_comparison.rst",
            category="Tables",
        ),
        "paper_tables/{run}/paper_comparison.md",
        "paper_tables/{run}/paper_comparison.tex",
    log:
        "logs/{run}/tables/paper_comparison.log",
    conda:
        "../../envs/plots.yaml"
    params:
        scale=config["scale"],
        pairing=as_json(plan.reference_pairing(config)),
        stem="paper_tables/{run}/paper_comparison",
    shell:
        "python -m imagekv table paper_comparison --input {input.reported:q}"
        " --option pairing={params.pairing:q}"
        " --run {wildcards.run} --scale {params.scale} --output {params.stem:q}"
        " > {log:q} 2>&1"


rule figure_correlation:
    input:
        results=plan.intervention_path("{run}", "correlation.json"),
        code=FIGURE_CODE + ["src/imagekv/figures/correlation.py"],
    output:
        pdf="figures/{run}/correlation.pdf",
        png=report(
            "figures/{run}/correlation.png",
            caption="../report/correlation_figure.rst",
            category="Interventions",
        ),
    log:
        "logs/{run}/figures/correlation.log",
    conda:
        "../../envs/plots.yaml"
    params:
        scale=config["scale"],
    shell:
        "python -m imagekv figure correlation --input {input.results:q}"
        " --run {wildcards.run} --scale {params.scale} --output {output.pdf:q} {output.png:q}"
        " > {log:q} 2>&1"
