# Interventions (SPEC E2, E4-E6): one job per MLM for the model-bound stages (key variance, BLINK
# answers under each blocking condition), one cheap job each for the collected results.

MLMS = sorted(config["models"])


rule key_variance:
    input:
        lambda wc: plan.key_variance_features(config, wc.backbone),
    output:
        json=plan.intervention_path("{run}", "key_variance.json", "{backbone}"),
        csv=plan.intervention_path("{run}", "key_variance.csv", "{backbone}"),
    log:
        "logs/{run}/interventions/key_variance/{backbone}.log",
    wildcard_constraints:
        backbone="|".join(MLMS),
    conda:
        "../../envs/probes.yaml"
    params:
        spec=lambda wc: as_json(plan.key_variance_spec(config, wc.backbone)),
    shell:
        "python -m imagekv key-variance --spec {params.spec:q} --features {input:q}"
        " --output-json {output.json:q} --output-csv {output.csv:q} > {log:q} 2>&1"


rule collect_key_variance:
    input:
        expand(
            plan.intervention_path("{{run}}", "key_variance.csv", "{model}"),
            model=MLMS,
        ),
    output:
        plan.intervention_path("{run}", "key_variance.csv"),
    log:
        "logs/{run}/interventions/collect_key_variance.log",
    conda:
        "../../envs/plots.yaml"
    params:
        sort="model,metric,threshold,layer",
    shell:
        "python -m imagekv concat --sort {params.sort} --output {output:q} {input:q}"
        " > {log:q} 2>&1"


rule masked_probes:
    input:
        flags=plan.intervention_path("{run}", "key_variance.json", "{backbone}"),
        stores=lambda wc: plan.masked_probes_inputs(config, wc.backbone),
    output:
        plan.intervention_path("{run}", "masked_probes.csv", "{backbone}"),
    log:
        "logs/{run}/interventions/masked_probes/{backbone}.log",
    wildcard_constraints:
        backbone="|".join(MLMS),
    conda:
        "../../envs/probes.yaml"
    threads: 1
    params:
        spec=lambda wc: as_json(plan.masked_probes_spec(config, wc.backbone)),
    shell:
        "python -m imagekv masked-probes --spec {params.spec:q} --flags {input.flags:q}"
        " --output {output:q} --threads {threads} > {log:q} 2>&1"


use rule collect_key_variance as collect_masked_probes with:
    input:
        expand(
            plan.intervention_path("{{run}}", "masked_probes.csv", "{model}"),
            model=MLMS,
        ),
    output:
        plan.intervention_path("{run}", "masked_probes.csv"),
    log:
        "logs/{run}/interventions/collect_masked_probes.log",
    params:
        sort="model,task,layer,condition,metric",


rule blink_answers:
    input:
        flags=plan.intervention_path("{run}", "key_variance.json", "{backbone}"),
        dataset=lambda wc: plan.blink_dataset_input(config),
        preflight=ancient(plan.preflight_path("{run}")),
    output:
        plan.intervention_path("{run}", "blink_answers.csv", "{backbone}"),
    log:
        "logs/{run}/interventions/blink_answers/{backbone}.log",
    wildcard_constraints:
        backbone="|".join(MLMS),
    conda:
        "../../envs/models.yaml"
    threads: MODEL_THREADS
    resources:
        gpu=1,
    params:
        spec=lambda wc: as_json(plan.blink_spec(config, wc.backbone)),
    shell:
        "python -m imagekv blink-answers --spec {params.spec:q} --flags {input.flags:q}"
        " --output {output:q} --threads {threads} > {log:q} 2>&1"


# E2 and E6 read each MLM's own unblocked answers: the blocking run's `none` condition, or, for a
# model whose `answers:` overrides its settings (Qwen2.5-VL at native resolution), a run of their own.
rule blink_perception_answers:
    input:
        dataset=lambda wc: plan.blink_dataset_input(config),
        preflight=ancient(plan.preflight_path("{run}")),
    output:
        plan.intervention_path("{run}", "blink_perception_answers.csv", "{backbone}"),
    log:
        "logs/{run}/interventions/blink_perception_answers/{backbone}.log",
    wildcard_constraints:
        backbone="|".join(plan.answer_override_models(config)) or "(?!)",
    conda:
        "../../envs/models.yaml"
    threads: MODEL_THREADS
    resources:
        gpu=1,
    params:
        spec=lambda wc: as_json(plan.perception_answers_spec(config, wc.backbone)),
    shell:
        "python -m imagekv blink-answers --spec {params.spec:q}"
        " --output {output:q} --threads {threads} > {log:q} 2>&1"


rule blink_accuracy:
    input:
        expand(
            plan.intervention_path("{{run}}", "blink_answers.csv", "{model}"),
            model=MLMS,
        ),
    output:
        plan.intervention_path("{run}", "blink_accuracy.csv"),
    log:
        "logs/{run}/interventions/blink_accuracy.log",
    conda:
        "../../envs/plots.yaml"
    params:
        spec=lambda wc: as_json(plan.blink_accuracy_spec(config)),
    shell:
        "python -m imagekv blink-accuracy --spec {params.spec:q} --output {output:q} {input:q}"
        " > {log:q} 2>&1"


use rule blink_accuracy as perception_accuracy with:
    input:
        lambda wc: plan.perception_answer_inputs(config),
    output:
        plan.intervention_path("{run}", "perception_accuracy.csv"),
    log:
        "logs/{run}/interventions/perception_accuracy.log",


rule not_surfaced:
    input:
        lambda wc: plan.not_surfaced_inputs(config),
    output:
        plan.intervention_path("{run}", "not_surfaced.csv"),
    log:
        "logs/{run}/interventions/not_surfaced.log",
    conda:
        "../../envs/probes.yaml"
    params:
        spec=lambda wc: as_json(plan.not_surfaced_spec(config)),
    shell:
        "python -m imagekv not-surfaced --spec {params.spec:q} --output {output:q} > {log:q} 2>&1"


rule prefix_probes:
    input:
        lambda wc: plan.prefix_probes_inputs(config, wc.backbone),
    output:
        rows=plan.intervention_path("{run}", "prefix_probes.csv", "{backbone}"),
        units=plan.intervention_path("{run}", "prefix_units.csv", "{backbone}"),
    log:
        "logs/{run}/interventions/prefix_probes/{backbone}.log",
    wildcard_constraints:
        backbone="|".join(MLMS),
    conda:
        "../../envs/probes.yaml"
    threads: 1
    params:
        spec=lambda wc: as_json(plan.prefix_probes_spec(config, wc.backbone)),
    shell:
        "python -m imagekv prefix-probes --spec {params.spec:q} --output {output.rows:q}"
        " --units {output.units:q} --threads {threads} > {log:q} 2>&1"


rule collect_prefix_probes:
    input:
        expand(
            plan.intervention_path("{{run}}", "prefix_probes.csv", "{model}"),
            model=MLMS,
        ),
    output:
        plan.intervention_path("{run}", "prefix_probes.csv"),
    log:
        "logs/{run}/interventions/collect_prefix_probes.log",
    conda:
        "../../envs/plots.yaml"
    shell:
        "python -m imagekv collect --output {output:q} {input:q} > {log:q} 2>&1"


rule prefix_gains:
    input:
        expand(
            plan.intervention_path("{{run}}", "prefix_units.csv", "{model}"),
            model=MLMS,
        ),
    output:
        plan.intervention_path("{run}", "prefix_gains.csv"),
    log:
        "logs/{run}/interventions/prefix_gains.log",
    conda:
        "../../envs/plots.yaml"
    params:
        spec=lambda wc: as_json(plan.prefix_gains_spec(config)),
    shell:
        "python -m imagekv prefix-gains --spec {params.spec:q} --output {output:q} {input:q}"
        " > {log:q} 2>&1"


rule correlation:
    input:
        unpack(lambda wc: plan.correlation_inputs(config)),
    output:
        plan.intervention_path("{run}", "correlation.json"),
    log:
        "logs/{run}/interventions/correlation.log",
    conda:
        "../../envs/plots.yaml"
    params:
        spec=lambda wc: as_json(plan.correlation_spec(config)),
    shell:
        "python -m imagekv correlation --spec {params.spec:q} --probes {input.probes:q}"
        " --accuracy {input.accuracy:q} --output {output:q} > {log:q} 2>&1"


# Figures (R-F5a, R-F5b, R-F5c, R-F6) and tables (R-T2, R-T3, R-T4, R-F4's numbers) of the interventions.


rule figure_key_variance:
    input:
        results=plan.intervention_path("{run}", "key_variance.csv"),
        code=FIGURE_CODE + ["src/imagekv/figures/key_variance.py"],
    output:
        pdf="figures/{run}/key_variance.pdf",
        png=report(
            "figures/{run}/key_variance.png",
            caption="../report/key_variance.rst",
            category="Interventions",
        ),
    log:
        "logs/{run}/figures/key_variance.log",
    conda:
        "../../envs/plots.yaml"
    params:
        scale=config["scale"],
        name="key_variance",
    shell:
        "python -m imagekv figure {params.name} --input {input.results:q}"
        " --run {wildcards.run} --scale {params.scale} --output {output.pdf:q} {output.png:q}"
        " > {log:q} 2>&1"


rule figure_key_variance_maps:
    input:
        results=plan.intervention_path("{run}", "key_variance.json", "{backbone}"),
        code=FIGURE_CODE + ["src/imagekv/figures/key_variance_maps.py"],
    output:
        pdf="figures/{run}/key_variance_maps_{backbone}.pdf",
        png=report(
            "figures/{run}/key_variance_maps_{backbone}.png",
            caption="../report/key_variance_maps.rst",
            category="Interventions",
        ),
    log:
        "logs/{run}/figures/key_variance_maps_{backbone}.log",
    wildcard_constraints:
        backbone="|".join(MLMS),
    conda:
        "../../envs/plots.yaml"
    params:
        scale=config["scale"],
    shell:
        "python -m imagekv figure key_variance_maps --input {input.results:q}"
        " --run {wildcards.run} --scale {params.scale} --output {output.pdf:q} {output.png:q}"
        " > {log:q} 2>&1"


rule figure_artifact_tokens:
    input:
        results=plan.intervention_path("{run}", "key_variance.json", "{backbone}"),
        code=FIGURE_CODE
        + [
            "src/imagekv/figures/key_variance_maps.py",
            "src/imagekv/figures/artifact_tokens.py",
        ],
    output:
        pdf="figures/{run}/artifact_tokens_{backbone}.pdf",
        png=report(
            "figures/{run}/artifact_tokens_{backbone}.png",
            caption="../report/artifact_tokens.rst",
            category="Interventions",
        ),
    log:
        "logs/{run}/figures/artifact_tokens_{backbone}.log",
    wildcard_constraints:
        backbone="|".join(MLMS),
    conda:
        "../../envs/plots.yaml"
    params:
        scale=config["scale"],
    shell:
        "python -m imagekv figure artifact_tokens --input {input.results:q}"
        " --run {wildcards.run} --scale {params.scale} --output {output.pdf:q} {output.png:q}"
        " > {log:q} 2>&1"


use rule figure_key_variance as figure_prefix_probes with:
    input:
        results=plan.intervention_path("{run}", "prefix_probes.csv"),
        code=FIGURE_CODE + ["src/imagekv/figures/prefix_probes.py"],
    output:
        pdf="figures/{run}/prefix_probes.pdf",
        png=report(
            "figures/{run}/prefix_probes.png",
            caption="../report/prefix_probes.rst",
            category="Interventions",
        ),
    log:
        "logs/{run}/figures/prefix_probes.log",
    params:
        scale=config["scale"],
        name="prefix_probes",


rule table_blocking:
    input:
        results=plan.intervention_path("{run}", "blink_accuracy.csv"),
        code=TABLE_CODE + ["src/imagekv/tables/blocking.py"],
    output:
        report(
            "paper_tables/{run}/blocking.csv",
            caption="../report/blocking.rst",
            category="Tables",
        ),
        "paper_tables/{run}/blocking.md",
        "paper_tables/{run}/blocking.tex",
    log:
        "logs/{run}/tables/blocking.log",
    conda:
        "../../envs/plots.yaml"
    params:
        scale=config["scale"],
        name="blocking",
        stem="paper_tables/{run}/blocking",
    shell:
        "python -m imagekv table {params.name} --input {input.results:q}"
        " --run {wildcards.run} --scale {params.scale} --output {params.stem:q}"
        " > {log:q} 2>&1"


use rule table_blocking as table_artifact_masking with:
    input:
        results=plan.intervention_path("{run}", "masked_probes.csv"),
        code=TABLE_CODE + ["src/imagekv/tables/artifact_masking.py"],
    output:
        report(
            "paper_tables/{run}/artifact_masking.csv",
            caption="../report/artifact_masking.rst",
            category="Tables",
        ),
        "paper_tables/{run}/artifact_masking.md",
        "paper_tables/{run}/artifact_masking.tex",
    log:
        "logs/{run}/tables/artifact_masking.log",
    params:
        scale=config["scale"],
        name="artifact_masking",
        stem="paper_tables/{run}/artifact_masking",


use rule table_blocking as table_prefix_gains with:
    input:
        results=plan.intervention_path("{run}", "prefix_gains.csv"),
        code=TABLE_CODE + ["src/imagekv/tables/prefix_gains.py"],
    output:
        report(
            "paper_tables/{run}/prefix_gains.csv",
            caption="../report/prefix_gains.rst",
            category="Tables",
        ),
        "paper_tables/{run}/prefix_gains.md",
        "paper_tables/{run}/prefix_gains.tex",
    log:
        "logs/{run}/tables/prefix_gains.log",
    params:
        scale=config["scale"],
        name="prefix_gains",
        stem="paper_tables/{run}/prefix_gains",


use rule table_blocking as table_not_surfaced with:
    input:
        results=plan.intervention_path("{run}", "not_surfaced.csv"),
        code=TABLE_CODE + ["src/imagekv/tables/not_surfaced.py"],
    output:
        report(
            "paper_tables/{run}/not_surfaced.csv",
            caption="../report/not_surfaced.rst",
            category="Tables",
        ),
        "paper_tables/{run}/not_surfaced.md",
        "paper_tables/{run}/not_surfaced.tex",
    log:
        "logs/{run}/tables/not_surfaced.log",
    params:
        scale=config["scale"],
        name="not_surfaced",
        stem="paper_tables/{run}/not_surfaced",


use rule table_blocking as table_correlation with:
    input:
        results=plan.intervention_path("{run}", "correlation.json"),
        code=TABLE_CODE + ["src/imagekv/tables/correlation.py"],
    output:
        report(
            "paper_tables/{run}/correlation.csv",
            caption="../report/correlation.rst",
            category="Tables",
        ),
        "paper_tables/{run}/correlation.md",
        "paper_tables/{run}/correlation.tex",
    log:
        "logs/{run}/tables/correlation.log",
    params:
        scale=config["scale"],
        name="correlation",
        stem="paper_tables/{run}/correlation",
