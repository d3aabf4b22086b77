# Positive controls (issue 18): a run of planted twins (config/controls.yaml) recovers each planted
# effect through the same rules as every run; `snakemake controls --configfile config/config.yaml config/controls.yaml`.


rule controls_results:
    input:
        flags=expand(
            plan.intervention_path("{{run}}", "key_variance.json", "{model}"),
            model=MLMS,
        ),
        accuracy=plan.intervention_path("{run}", "blink_accuracy.csv"),
        probes=plan.control_probe_inputs(config),
        not_surfaced=plan.intervention_path("{run}", "not_surfaced.csv"),
        prefix_gains=plan.intervention_path("{run}", "prefix_gains.csv"),
        correlation=plan.intervention_path("{run}", "correlation.json"),
    output:
        plan.intervention_path("{run}", "controls.csv"),
    log:
        "logs/{run}/interventions/controls.log",
    conda:
        "../../envs/plots.yaml"
    params:
        spec=lambda wc: as_json(plan.controls_spec(config)),
    shell:
        "python -m imagekv controls --spec {params.spec:q} --flags {input.flags:q}"
        " --accuracy {input.accuracy:q} --probes {input.probes:q}"
        " --not-surfaced {input.not_surfaced:q} --prefix-gains {input.prefix_gains:q}"
        " --correlation {input.correlation:q}"
        " --output {output:q} > {log:q} 2>&1"


use rule table_blocking as table_controls with:
    input:
        results=plan.intervention_path("{run}", "controls.csv"),
        code=TABLE_CODE + ["src/imagekv/tables/controls.py"],
    output:
        "paper_tables/{run}/controls.csv",
        "paper_tables/{run}/controls.md",
        "paper_tables/{run}/controls.tex",
    log:
        "logs/{run}/tables/controls.log",
    params:
        scale=config["scale"],
        name="controls",
        stem="paper_tables/{run}/controls",


rule figure_controls:
    input:
        results=plan.intervention_path("{run}", "controls.csv"),
        code=FIGURE_CODE + ["src/imagekv/figures/controls.py"],
    output:
        pdf="figures/{run}/controls.pdf",
        png="figures/{run}/controls.png",
    log:
        "logs/{run}/figures/controls.log",
    conda:
        "../../envs/plots.yaml"
    params:
        scale=config["scale"],
    shell:
        "python -m imagekv figure controls --input {input.results:q}"
        " --run {wildcards.run} --scale {params.scale} --output {output.pdf:q} {output.png:q}"
        " > {log:q} 2>&1"


rule controls:
    input:
        expand("paper_tables/{run}/controls.{ext}", run=RUN, ext=["csv", "md", "tex"]),
        expand("figures/{run}/controls.{ext}", run=RUN, ext=["pdf", "png"]),
