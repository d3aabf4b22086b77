# Replication of "Visual Representations inside the Language Model" (Liu et al., COLM 2025).
#
#   snakemake --cores all                                # smoke run: tiny random models, synthetic data
#   snakemake --cores all --configfile config/paper.yaml # paper run: real checkpoints and datasets, CUDA
#
# Rules are thin: each one calls `python -m imagekv <command>`; all logic lives in src/imagekv.


# The smoke config only when no --configfile is given: Snakemake deep-merges config files, and a
# paper run must not inherit smoke values for keys it leaves out.
if not config:
    # Read strictly first (UTF-8, no duplicate keys), so a bad file fails naming itself. (A file given
    # with --configfile is read by Snakemake before this file runs: `python -m imagekv check-config`.)
    import sys

    sys.path.insert(0, f"{workflow.basedir}/src")
    from imagekv.config import check_config_file

    check_config_file("config/config.yaml")

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/preflight.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/probes.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/interventions.smk"
include: "workflow/rules/controls.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        final_targets(),
