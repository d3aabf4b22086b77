"""What the workflow computes for a config: the backbones, tasks, file paths and the spec of each job.

The Snakemake rules ask this module for their targets and params, so the logic of "which jobs exist"
is plain Python, tested like the rest, and the rule files stay declarative.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imagekv.prefixes import is_template

# Representations an MLM's feature store holds; references and calibration backbones store only values.
MLM_REPRESENTATIONS = ("values", "keys", "projection")
# The MLM's own vision tower output (the projector's input), stored too when the config probes it.
TOWER = "tower"
# Layout of the feature stores extraction writes (see imagekv.features). Part of every extraction
# spec, so a new layout reruns extraction and misses Snakemake's between-workflow cache.
STORE_FORMAT = 4
# Probes that score image features against text-token values (SPEC T3, T4).
TEXT_QUERY_TASKS = ("semantic_seg", "referring_seg")


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    kind: str  # "mlm" | "reference" | "calibration"
    cfg: dict
    representations: tuple[str, ...]  # labels in result tables

    def stored(self, representation: str) -> str:
        """Name of the stored tensor a result label reads ("siglip" -> "values")."""
        return representation if self.kind == "mlm" else "values"


def model_cfg(config: dict, model: str) -> dict:
    """An MLM's settings for extraction and the E4 blocking run: its `models:` section without the
    overrides of its own BLINK answers."""
    return {k: v for k, v in config["models"][model].items() if k != "answers"}


def answer_cfg(config: dict, model: str) -> dict:
    """An MLM's settings for its own BLINK answers (E2's perception score, E6's MLM answer): its
    settings with `models.<name>.answers` applied (e.g. Qwen2.5-VL at its native resolution)."""
    return model_cfg(config, model) | config["models"][model].get("answers", {})


def backbones(config: dict) -> dict[str, BackboneEntry]:
    entries = {}
    for name in config["models"]:
        entries[name] = BackboneEntry(name, "mlm", model_cfg(config, name), tuple(config["probing"]["representations"]))
    for kind, section in (("reference", "references"), ("calibration", "calibration")):
        for name, cfg in config.get(section, {}).items():
            entries[name] = BackboneEntry(name, kind, cfg, (name,))
    return entries


def tasks(config: dict) -> dict[str, dict]:
    """Probe task -> its config section (which names its dataset)."""
    return config["probes"]


def dataset_root(config: dict, dataset: str) -> str:
    """The folder the dataset's loader reads, laid out as the publisher's archive unpacks: a copy the
    user already has (`source: local` with its `root`), or the one the workflow writes."""
    section = config["datasets"][dataset]
    if section["source"] == "local":
        return str(Path(section["root"]).expanduser())
    return f"data/{'synthetic' if section['source'] == 'synthetic' else 'real'}/{dataset}"


def local_check_path(dataset: str) -> str:
    return f"data/local/{dataset}.json"


def dataset_input(config: dict, dataset: str) -> str:
    """What a rule reading the dataset waits for. A user's own copy is never a Snakemake input (it is
    no rule's output, and the between-workflow cache cannot hash a folder): rules wait for the record
    of its check instead, written outside it."""
    if config["datasets"][dataset]["source"] == "local":
        return local_check_path(dataset)
    return dataset_root(config, dataset)


def features_path(run: str, backbone: str, dataset: str, prefix: str) -> str:
    """The feature store's folder (manifest.json and shards/), one Snakemake directory output."""
    return f"results/{run}/{backbone}/{dataset}/features/{prefix}"


def item_features_path(run: str, backbone: str, dataset: str, prefix: str) -> str:
    """A per-item store (E5, imagekv.prefixes): one extraction per text query, with its own prefix."""
    return f"results/{run}/{backbone}/{dataset}/item_features/{prefix}"


def probe_path(run: str, backbone: str, dataset: str, prefix: str, representation: str) -> str:
    return f"results/{run}/{backbone}/{dataset}/probe/{prefix}/{representation}.csv"


# Keys of a `datasets:` entry that say where the data comes from, not how the loader reads it.
LOCATION_KEYS = ("source", "root", "user_files")


def dataset_spec(config: dict, dataset: str) -> dict:
    """The dataset's loader settings (and, for synthetic data, the generator's)."""
    section = config["datasets"][dataset]
    cfg = {k: v for k, v in section.items() if k not in LOCATION_KEYS}
    return {"dataset": dataset, "source": section["source"], "cfg": cfg, "seed": config["seed"]}


def check_spec(config: dict, dataset: str) -> dict:
    """What `python -m imagekv check-dataset` needs: the dataset, its folder and loader settings."""
    return {"dataset": dataset, "root": dataset_root(config, dataset), "cfg": loader_cfg(config, dataset)}


def derived_path(config: dict, dataset: str) -> str:
    """Where loaders write what they derive from a dataset (BLINK's extracted images): under the
    run's results, never into the dataset folder."""
    return f"results/{config['run']}/datasets/{dataset}"


# Datasets whose loader writes files it derives (BLINK extracts the images of its parquet files).
DERIVING_DATASETS = ("blink",)


def loader_cfg(config: dict, dataset: str) -> dict:
    """What `load_dataset` receives: the dataset's settings, plus `derived_dir` for a loader that
    writes derived files."""
    cfg = dataset_spec(config, dataset)["cfg"]
    return cfg | {"derived_dir": derived_path(config, dataset)} if dataset in DERIVING_DATASETS else cfg


def download_spec(config: dict, dataset: str) -> dict:
    """What `python -m imagekv download` needs: the dataset and the files only the user can supply."""
    return {"dataset": dataset, "user_files": config["datasets"][dataset].get("user_files", {})}


def extraction_spec(config: dict, backbone: str, dataset: str, prefix: str) -> dict:
    entry = backbones(config)[backbone]
    return {
        "run": config["run"],
        "model": backbone,
        "model_cfg": entry.cfg,
        "dataset": dataset,
        "dataset_root": dataset_root(config, dataset),
        "dataset_cfg": loader_cfg(config, dataset),
        "prefix_name": prefix,
        "prefix": config["prefixes"][prefix],
        "store": mlm_store(config, backbone, dataset, prefix) if entry.kind == "mlm" else ["values"],
        "store_format": STORE_FORMAT,
        "device": config["device"],
        "dtype": config["dtype"],
        **config["extraction"],
    }


def item_extraction_spec(config: dict, backbone: str, dataset: str, prefix: str) -> dict:
    return extraction_spec(config, backbone, dataset, prefix) | {"per_item": True}


def mlm_store(config: dict, model: str, dataset: str, prefix: str) -> list[str]:
    """What an MLM's extraction stores: values, keys and projection, and its tower only where a probe
    reads it, a probed dataset without prefix (the tower sees no text; Qwen2.5-VL's 5,120-d tower
    costs about a third of the bytes of its 28 layers of values)."""
    probed = {section["dataset"] for section in tasks(config).values()}
    probed_tower = TOWER in config["probing"]["representations"] and prefix == "none" and dataset in probed
    if probed_tower and config["models"][model].get("view") == "crops":
        raise ValueError(f"probing.representations holds {TOWER}, but models.{model}.view is crops: "
                         f"the tower maps token for token onto the base view only")
    return [*MLM_REPRESENTATIONS, *([TOWER] if probed_tower else [])]


def reference_pairing(config: dict) -> dict[str, dict]:
    """Each MLM's own reference encoders (`pairing:`, issue 17.3): model -> {"references": names in
    `references:`, "note": what footers say about it}. Empty when the config pairs nothing. Raises
    naming the key that refers to a model or reference the config does not define."""
    pairing = config.get("pairing", {})
    for model, section in pairing.items():
        if model not in config["models"]:
            raise KeyError(f"pairing.{model}: {model!r} is not a model of models:")
        unknown = sorted(set(section["references"]) - set(config.get("references", {})))
        if unknown:
            raise KeyError(f"pairing.{model}.references names {unknown}, which references: does not define")
    return {model: {"references": list(s["references"]), "note": s.get("note", "")} for model, s in pairing.items()}


def probe_spec(config: dict, backbone: str, dataset: str, prefix: str, representation: str) -> dict:
    entry = backbones(config)[backbone]
    task = task_of_dataset(config, dataset)
    return {
        "run": config["run"],
        "model": backbone,
        "representation": representation,
        "stored": entry.stored(representation),
        "task": task,
        "dataset": dataset,
        "dataset_root": dataset_root(config, dataset),
        "dataset_cfg": loader_cfg(config, dataset),
        "prefix": prefix,
        "params": {k: v for k, v in config["probes"][task].items() if k != "dataset"},
        "split_seed": config["probing"]["split_seed"],
        "device": config["device"],
        "seed": config["seed"],
    }


def task_of_dataset(config: dict, dataset: str) -> str:
    matches = [task for task, section in tasks(config).items() if section["dataset"] == dataset]
    if len(matches) != 1:
        raise KeyError(f"dataset {dataset!r} is probed by {len(matches)} tasks in probes:, expected one")
    return matches[0]


def is_probed(entry: BackboneEntry, task: str, representation: str) -> bool:
    """Text-query probes need text values in the same space as the image features: the MLM's own
    values and the calibration backbones have them; the projection, keys and SigLIP do not."""
    if task not in TEXT_QUERY_TASKS:
        return True
    return entry.kind == "calibration" or (entry.kind == "mlm" and representation == "values")


def probe_targets(config: dict, prefix: str = "none") -> list[str]:
    run = config["run"]
    return sorted(
        probe_path(run, entry.name, section["dataset"], prefix, representation)
        for entry in backbones(config).values()
        for task, section in tasks(config).items()
        for representation in entry.representations
        if is_probed(entry, task, representation)
    )


# R-F3: example predictions of LLaVA-OneVision (SPEC 6: M1), its projection and SigLIP, on every probe.
QUALITATIVE_MODEL = "llava_onevision"
QUALITATIVE_TASKS = ("fewshot_seg", "coseg", "semantic_seg", "referring_seg", "semantic_corr", "temporal_corr")


def qualitative_spec(config: dict) -> dict | None:
    """The stores and datasets of the R-F3 examples; None when the config lacks a part of them."""
    model, run = QUALITATIVE_MODEL, config["run"]
    if model not in config["models"] or "siglip" not in config.get("references", {}):
        return None
    if not set(QUALITATIVE_TASKS) <= set(config["probes"]):
        return None
    tasks = {}
    for task in QUALITATIVE_TASKS:
        dataset = config["probes"][task]["dataset"]
        stores = {name: features_path(run, name, dataset, "none") for name in (model, "siglip")}
        stores = {model: stores[model], f"{model} projection": stores[model], "siglip": stores["siglip"]}
        if task in TEXT_QUERY_TASKS:  # only the MLM's values share the text's space (is_probed)
            stores = {model: stores[model]}
        tasks[task] = {
            "dataset": dataset,
            "dataset_root": dataset_root(config, dataset),
            "dataset_cfg": loader_cfg(config, dataset),
            "params": {k: v for k, v in config["probes"][task].items() if k != "dataset"},
            "stores": stores,
        }
    return {"model": model, "tasks": tasks, "split_seed": config["probing"]["split_seed"]}


def qualitative_inputs(config: dict) -> list[str]:
    spec = qualitative_spec(config)
    paths = {path for task in spec["tasks"].values() for path in task["stores"].values()}
    paths |= {dataset_input(config, task["dataset"]) for task in spec["tasks"].values()}
    return sorted(paths)


# Interventions (SPEC E2, E4-E6): one job per MLM per stage, plus cheap collecting jobs.
BASELINE_CONDITION = "none"  # no intervention: BLINK answers unblocked, value probes unmasked
# Here, not beside the code that uses them, so that table jobs read them without importing torch.
MASKING_CONDITIONS = (BASELINE_CONDITION, "flagged", "random")  # value probes' excluded tokens (E4.3)
SUBTASK_SUMMARIES = ("overall", "subtask_mean")  # the rows of a BLINK accuracy table beside the subtasks


def interventions(config: dict) -> dict | None:
    """The `interventions:` section, or None when the config runs no interventions. Raises naming
    the missing `datasets:` entry when the section needs one."""
    section = config.get("interventions")
    if section is None:
        return None
    for stage in ("key_variance", "blocking"):
        dataset = section[stage]["dataset"]
        if dataset not in config["datasets"]:
            raise KeyError(f"interventions.{stage}.dataset is {dataset!r}, which datasets: does not define")
    for key in ("prefixes", "item_prefixes", "in_context"):
        unknown = sorted(set(section["prefix"][key]) - set(config["prefixes"]))
        if unknown:
            raise KeyError(f"interventions.prefix.{key} names {unknown}, which prefixes: does not define")
    templates = [name for name in section["prefix"]["prefixes"] if is_template(config["prefixes"][name])]
    if templates:
        raise KeyError(f"interventions.prefix.prefixes names the per-item templates {templates}: list them under "
                       "interventions.prefix.item_prefixes (they are filled per text query)")
    return section


def intervention_path(run: str, name: str, model: str | None = None) -> str:
    """A per-model intervention result (results/{run}/{model}/interventions/) or a collected one."""
    return f"results/{run}/{model}/interventions/{name}" if model else f"results/{run}/interventions/{name}"


def key_variance_spec(config: dict, model: str) -> dict:
    section = interventions(config)["key_variance"]
    return {
        "run": config["run"],
        "model": model,
        "dataset": section["dataset"],
        "prefix": section["prefix"],
        "params": {k: v for k, v in section.items() if k not in ("dataset", "prefix")},
    }


def key_variance_features(config: dict, model: str) -> str:
    section = interventions(config)["key_variance"]
    return features_path(config["run"], model, section["dataset"], section["prefix"])


def masked_probes_spec(config: dict, model: str) -> dict:
    """E4.3: the value probe of each chosen task on the stores of the key-variance prefix, at the
    masked layers under each masking condition."""
    section = interventions(config)["masked_probes"]
    run, prefix = config["run"], interventions(config)["key_variance"]["prefix"]
    tasks = {}
    for task in section["tasks"]:
        dataset = config["probes"][task]["dataset"]
        tasks[task] = probe_spec(config, model, dataset, prefix, "values") | {
            "features": features_path(run, model, dataset, prefix)
        }
    masking = {k: section[k] for k in ("layers", "conditions", "random_seed")}
    return {"run": run, "model": model, "masking": masking, "tasks": tasks}


def masked_probes_inputs(config: dict, model: str) -> list[str]:
    tasks = masked_probes_spec(config, model)["tasks"].values()
    return sorted({task["features"] for task in tasks} | {dataset_input(config, task["dataset"]) for task in tasks})


def blink_spec(config: dict, model: str) -> dict:
    """E4 blocking evaluation of one MLM on the BLINK questions, under every blocking condition."""
    section = interventions(config)["blocking"]
    dataset = section["dataset"]
    return {
        "run": config["run"],
        "model": model,
        "model_cfg": model_cfg(config, model),
        "dataset": dataset,
        "dataset_root": dataset_root(config, dataset),
        "dataset_cfg": loader_cfg(config, dataset),
        "device": config["device"],
        "dtype": config["dtype"],
        "params": {k: v for k, v in section.items() if k not in ("dataset", "bootstrap_resamples", "bootstrap_seed")},
    }


def answer_override_models(config: dict) -> list[str]:
    """The MLMs whose own BLINK answers take other settings than their blocking run."""
    return sorted(model for model in config["models"] if answer_cfg(config, model) != model_cfg(config, model))


def perception_answers_spec(config: dict, model: str) -> dict:
    """The unblocked BLINK answers of an MLM in its answer settings (no flags, no blocking)."""
    spec = blink_spec(config, model)
    return spec | {"model_cfg": answer_cfg(config, model),
                   "params": spec["params"] | {"conditions": [BASELINE_CONDITION]}}


def perception_answers(config: dict, model: str) -> str:
    """The answers E2 and E6 read: a run of their own when `models.<name>.answers` overrides a
    setting, else the blocking run's (its unblocked condition), which then is the same forward."""
    name = "blink_perception_answers.csv" if model in answer_override_models(config) else "blink_answers.csv"
    return intervention_path(config["run"], name, model)


def perception_answer_inputs(config: dict) -> list[str]:
    return [perception_answers(config, model) for model in sorted(config["models"])]


def blink_dataset_input(config: dict) -> str:
    """What the BLINK answer runs wait for (see dataset_input)."""
    return dataset_input(config, interventions(config)["blocking"]["dataset"])


def blink_accuracy_spec(config: dict) -> dict:
    section = interventions(config)["blocking"]
    return {
        "run": config["run"],
        "baseline": BASELINE_CONDITION,
        "resamples": section["bootstrap_resamples"],
        "seed": section["bootstrap_seed"],
    }


def not_surfaced_spec(config: dict) -> dict:
    """E6 for every MLM at once (a cheap read of stored values): each model's BLINK value store
    (one image per context, SPEC E6) and its own unblocked answers (`perception_answers`)."""
    section = interventions(config)["not_surfaced"]
    run, dataset = config["run"], interventions(config)["blocking"]["dataset"]
    return {
        "run": run,
        "dataset": dataset,
        "dataset_root": dataset_root(config, dataset),
        "dataset_cfg": loader_cfg(config, dataset),
        "condition": BASELINE_CONDITION,
        "models": {
            model: {
                "features": features_path(run, model, dataset, section["prefix"]),
                "answers": perception_answers(config, model),
            }
            for model in sorted(config["models"])
        },
        "params": dict(section) | {"readouts": loaded_readouts(config)},
    }


def loaded_readouts(config: dict) -> dict:
    """E6's read-outs of the BLINK subtasks the run loads (`datasets.<blink>.subtasks`; all when unset):
    a run of a few subtasks, such as the controls run, reads out only those."""
    section = interventions(config)
    loaded = loader_cfg(config, section["blocking"]["dataset"]).get("subtasks")
    readouts = section["not_surfaced"]["readouts"]
    return {subtask: kinds for subtask, kinds in readouts.items() if not loaded or subtask in loaded}


def not_surfaced_inputs(config: dict) -> list[str]:
    spec = not_surfaced_spec(config)
    inputs = {path for paths in spec["models"].values() for path in paths.values()}
    return sorted(inputs | {dataset_input(config, spec["dataset"])})


def prefix_text_tasks(config: dict) -> list[str]:
    """The E5 tasks that take per-item prefixes and in-context queries: the text-query ones."""
    return [task for task in interventions(config)["prefix"]["tasks"] if task in TEXT_QUERY_TASKS]


def item_extraction_jobs(config: dict) -> list[tuple[str, str]]:
    """(dataset, prefix) of every per-item store of each MLM (E5): the item prefixes' and those whose
    queries are also read in context."""
    section = interventions(config)
    if not section:
        return []
    prefixes = set(section["prefix"]["item_prefixes"]) | set(section["prefix"]["in_context"])
    return sorted({(config["probes"][task]["dataset"], prefix) for task in prefix_text_tasks(config)
                   for prefix in prefixes})


def prefix_conditions(config: dict, model: str, task: str) -> list[dict]:
    """E5 conditions of one task: no prefix and each fixed prefix on the per-image stores; in a
    text-query task also each item prefix on its per-item store, the queries fixed (the no-prefix
    store's text-only values), and the in-context variants (the query after the image)."""
    section, run = interventions(config)["prefix"], config["run"]
    dataset = config["probes"][task]["dataset"]
    text_task = task in TEXT_QUERY_TASKS
    queries = features_path(run, model, dataset, "none") if text_task else None
    conditions = [{"label": "none", "features": features_path(run, model, dataset, "none"), "queries": None,
                   "per_item": False, "in_context": False}]
    conditions += [{"label": prefix, "features": features_path(run, model, dataset, prefix), "queries": queries,
                    "per_item": False, "in_context": False} for prefix in section["prefixes"]]
    if text_task:
        conditions += [{"label": prefix, "features": item_features_path(run, model, dataset, prefix),
                        "queries": queries, "per_item": True, "in_context": False}
                       for prefix in section["item_prefixes"]]
        conditions += [{"label": f"in_context:{prefix}", "features": item_features_path(run, model, dataset, prefix),
                        "queries": None, "per_item": True, "in_context": True} for prefix in section["in_context"]]
    return conditions


def prefix_probes_spec(config: dict, model: str) -> dict:
    """E5 for one MLM: every task's probe settings and conditions (imagekv.interventions.prefix)."""
    tasks = {}
    for task in interventions(config)["prefix"]["tasks"]:
        dataset = config["probes"][task]["dataset"]
        tasks[task] = {
            "dataset": dataset,
            "dataset_root": dataset_root(config, dataset),
            "dataset_cfg": loader_cfg(config, dataset),
            "probe": probe_spec(config, model, dataset, "none", "values"),
            "conditions": prefix_conditions(config, model, task),
        }
    return {"run": config["run"], "model": model, "tasks": tasks}


def prefix_probes_inputs(config: dict, model: str) -> list[str]:
    spec = prefix_probes_spec(config, model)
    paths = {c["features"] for task in spec["tasks"].values() for c in task["conditions"]}
    paths |= {dataset_input(config, task["dataset"]) for task in spec["tasks"].values()}
    return sorted(paths)


def prefix_gains_spec(config: dict) -> dict:
    section = interventions(config)["prefix"]
    return {"run": config["run"], "resamples": section["bootstrap_resamples"], "seed": section["bootstrap_seed"]}


def correlation_spec(config: dict) -> dict:
    section = interventions(config)["correlation"]
    return {
        "run": config["run"],
        "models": sorted(config["models"]),
        "benchmark": section["benchmark"],
        "subtask": section["score"],
        "condition": section.get("condition", BASELINE_CONDITION),
        "tasks": correlation_tasks(config),
    }


def correlation_tasks(config: dict) -> list[str]:
    """E2's probe tasks: `interventions.correlation.tasks`, by default every task whose input
    projection is probed (the text-query tasks' is not: `is_probed`)."""
    projected = [task for task in tasks(config) if task not in TEXT_QUERY_TASKS]
    chosen = interventions(config)["correlation"].get("tasks", projected)
    unknown = sorted(set(chosen) - set(projected))
    if unknown:
        raise KeyError(f"interventions.correlation.tasks names {unknown}; expected tasks of `probes:` whose input "
                       f"projection is probed: {sorted(projected)}")
    return sorted(chosen)


def correlation_inputs(config: dict) -> dict[str, list[str] | str]:
    """E2's inputs: each MLM's projection and value probes on its tasks, and the BLINK accuracy of
    its condition: each MLM's own unblocked answers, or another condition of the blocking run."""
    run, spec = config["run"], correlation_spec(config)
    accuracy = intervention_path(run, "perception_accuracy.csv")
    if spec["condition"] != BASELINE_CONDITION:
        if spec["condition"] not in interventions(config)["blocking"]["conditions"]:
            raise KeyError(f"interventions.correlation.condition is {spec['condition']!r}, which "
                           "interventions.blocking.conditions does not run")
        accuracy = intervention_path(run, "blink_accuracy.csv")
    probes = sorted(probe_path(run, model, tasks(config)[task]["dataset"], "none", representation)
                    for model in config["models"] for task in spec["tasks"]
                    for representation in ("projection", "values"))
    return {"probes": probes, "accuracy": accuracy}


# The preflight (imagekv.preflight): the first job, on which every GPU job waits.
def preflight_path(run: str) -> str:
    return f"results/{run}/preflight.json"


def preflight_inputs_of(config: dict, backbone: str) -> list[str]:
    """What a GPU job of `backbone` waits for: the preflight for an MLM (references and calibration
    backbones have no prompt to check)."""
    return [preflight_path(config["run"])] if backbone in config["models"] else []


def extraction_jobs(config: dict, model: str) -> list[tuple[str, str]]:
    """(dataset, prefix) of every feature store of `model` the run extracts: the probes' (no prefix),
    and with interventions the E5 prefixes', the key-variance and masked-probe stores' and E6's."""
    jobs = {(section["dataset"], "none") for section in tasks(config).values()}
    section = interventions(config)
    if section:
        kv_prefix = section["key_variance"]["prefix"]
        jobs.add((section["key_variance"]["dataset"], kv_prefix))
        jobs |= {(config["probes"][task]["dataset"], kv_prefix) for task in section["masked_probes"]["tasks"]}
        jobs |= {(config["probes"][task]["dataset"], prefix)
                 for task in section["prefix"]["tasks"] for prefix in section["prefix"]["prefixes"]}
        jobs.add((section["blocking"]["dataset"], section["not_surfaced"]["prefix"]))
    return sorted(jobs)


def preflight_inputs(config: dict) -> list[str]:
    """What the preflight reads: every dataset an MLM's prompts are built from."""
    datasets = {dataset for model in config["models"] for dataset, _ in extraction_jobs(config, model)}
    return sorted(dataset_input(config, dataset) for dataset in datasets)


def preflight_spec(config: dict) -> dict:
    """The part of the config the preflight reads, so that an unrelated key (a figure's, a probe's
    setting) neither reruns it nor changes the cache key of the extraction jobs that wait for it."""
    datasets = {dataset for model in config["models"] for dataset, _ in extraction_jobs(config, model)}
    spec = {
        "run": config["run"], "seed": config["seed"], "models": config["models"], "prefixes": config["prefixes"],
        "datasets": {name: config["datasets"][name] for name in sorted(datasets)},
        "probes": {task: {"dataset": section["dataset"]} for task, section in tasks(config).items()},
        "preflight": config.get("preflight", {}),
    }
    section = interventions(config)
    if section:
        spec["interventions"] = {
            "key_variance": {k: section["key_variance"][k] for k in ("dataset", "prefix")},
            "masked_probes": {"tasks": section["masked_probes"]["tasks"]},
            "prefix": {k: section["prefix"][k] for k in ("prefixes", "item_prefixes", "in_context", "tasks")},
            "blocking": {
                k: section["blocking"][k] for k in ("dataset", "answer_instruction", "conditions", "greedy_tokens")
            },
            "not_surfaced": {"prefix": section["not_surfaced"]["prefix"]},
        }
    return spec


def controls_spec(config: dict) -> dict:
    """The controls run (config/controls.yaml): every MLM must be a planted twin."""
    unplanted = [name for name, cfg in config["models"].items() if cfg["source"] != "planted"]
    if unplanted:
        raise ValueError(f"the controls need planted twins (models.<name>.source: planted); not planted: {unplanted}")
    return {"run": config["run"], "params": {"models": sorted(config["models"])}}


# The probe tasks of the controls (imagekv.interventions.controls): DAVIS temporal correspondence
# is the cheapest probe (no training) and the one whose twins' values score far above the noise bound.
CONTROL_PROBE_TASKS = ("temporal_corr",)


def control_probe_inputs(config: dict) -> list[str]:
    """The value probes of every planted MLM and the noise backbone's probe on the controls' tasks."""
    run = config["run"]
    datasets = [tasks(config)[task]["dataset"] for task in CONTROL_PROBE_TASKS if task in tasks(config)]
    return sorted(
        [probe_path(run, model, dataset, "none", "values") for model in config["models"] for dataset in datasets]
        + [probe_path(run, "noise", dataset, "none", "noise") for dataset in datasets]
    )
