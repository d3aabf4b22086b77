import io
import json
import re
import subprocess
import sys
import zlib
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import yaml
from fontTools.ttLib import TTFont

from imagekv import cli
from imagekv.figures import layerwise, task_curves
from imagekv.figures.style import PDF_UNREAD_FONT_TABLES, apply_style, panels, save, stamp
from imagekv.labels import SMOKE_MARK, Provenance
from imagekv.tables import best_layers, paper_comparison, write_table
from workflow_runs import ROOT, failure_details, snakemake  # noqa: F401

PROVENANCE = Provenance(run="smoke", scale="smoke", models=["llava_onevision"], grid="4x4", prefix="none", samples="fewshot_seg=3")


def test_table_formats_agree_and_carry_provenance(tmp_path):
    frame = pd.DataFrame({"task": ["fewshot_seg", "coseg"], "best": [0.51234, float("nan")]})
    write_table(frame, tmp_path / "t", "A caption", PROVENANCE)
    csv = (tmp_path / "t.csv").read_text()
    md = (tmp_path / "t.md").read_text()
    tex = (tmp_path / "t.tex").read_text()
    assert csv.splitlines() == ["task,best", "fewshot_seg,0.51234", "coseg,"]
    assert "| fewshot\\_seg" not in md and "| fewshot_seg | 0.512 |" in md
    assert r"fewshot\_seg & 0.512 \\" in tex and r"coseg & – \\" in tex
    for text in (md, tex):
        assert "run: smoke (smoke)" in text and SMOKE_MARK in text


def test_tables_do_not_import_the_figure_code():
    """The table rules list the labels, not the figures' style, as input: restyling reruns no table."""
    probe = f"import sys, {', '.join(cli.TABLES.values())}; print(sorted(m for m in sys.modules if 'figures' in m))"
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert imported.strip() == "[]"


def test_saved_figures_are_byte_identical_across_saves(tmp_path):
    def draw(stem):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        save(fig, [tmp_path / f"{stem}.pdf", tmp_path / f"{stem}.png"], PROVENANCE)

    draw("a")
    draw("b")
    for ext in ("pdf", "png"):
        assert (tmp_path / f"a.{ext}").read_bytes() == (tmp_path / f"b.{ext}").read_bytes()


def embedded_fonts(pdf: bytes) -> list[TTFont]:
    """The TrueType fonts a PDF embeds (its FontFile2 streams, as matplotlib writes them)."""
    fonts = []
    for number in re.findall(rb"/FontFile2 (\d+) 0 R", pdf):
        start = re.search(rb"\n" + number + rb" 0 obj\n<<.*?>>\nstream\n", pdf, flags=re.S).end()
        fonts.append(TTFont(io.BytesIO(zlib.decompressobj().decompress(pdf[start:pdf.index(b"endstream", start)]))))
    return fonts


def test_pdf_fonts_are_embedded_truetype_without_the_tables_a_pdf_never_reads(tmp_path):
    apply_style()
    fig, ax = plt.subplots()
    ax.set_title("fine-tuned τ – office")  # ligatures and characters beyond ASCII
    save(fig, [tmp_path / "f.pdf"], PROVENANCE)
    fonts = embedded_fonts((tmp_path / "f.pdf").read_bytes())
    assert fonts and all("glyf" in font for font in fonts)  # Type 42: TrueType outlines, as journals ask
    assert not [table for font in fonts for table in PDF_UNREAD_FONT_TABLES if table in font]


# --- layout -------------------------------------------------------------------------------------


def test_footer_sits_below_every_label_and_panels_do_not_overlap():
    fig, axes = panels(6)
    for ax in axes:
        ax.plot([0, 1], [0, 1])
        ax.set_xlabel("normalised LM depth")
        ax.set_ylabel("a long y label")
    stamp(fig, PROVENANCE)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    footer = next(t for t in fig.texts if t.get_text().startswith("run: smoke"))
    footer_top = footer.get_window_extent(renderer).y1
    boxes = [ax.get_tightbbox(renderer) for ax in axes]  # each panel with its tick and axis labels
    assert all(footer_top < box.y0 for box in boxes)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
    plt.close(fig)


def test_panels_removes_unused_cells():
    fig, axes = panels(4, columns=3)
    assert len(axes) == 4 and len(fig.axes) == 4
    plt.close(fig)


# --- R-T1 and the per-task figures -----------------------------------------------------------------


def _rows(model, representation, values, task="coseg", metric="jaccard"):
    return [
        {"run": "smoke", "model": model, "representation": representation, "task": task, "dataset": "msrc",
         "prefix": "none", "layer": layer, "metric": metric, "value": value, "n": 2, "grid": "8x8",
         "config_hash": "h", "params": "{}"}
        for layer, value in values
    ]


def test_best_layers_by_hand():
    frame = pd.DataFrame(
        _rows("llava_onevision", "values", [(0, 0.2), (1, 0.5), (2, 0.4), (3, 0.1)])
        + _rows("llava_onevision", "projection", [(-1, 0.3)])
        + _rows("siglip", "siglip", [(2, 0.6)])
        + _rows("oracle", "oracle", [(0, 0.9)])
        + _rows("noise", "noise", [(0, 0.05)])
        + _rows("llava_onevision", "values", [(1, 0.99)], metric="precision")  # not the headline metric
    )
    (row,) = best_layers.summarise(frame).to_dict("records")
    assert row["best_layer"] == "1/4" and row["best_depth"] == pytest.approx(1 / 3)
    assert (row["best"], row["last"], row["projection"]) == (0.5, 0.1, 0.3)
    assert row["gain_over_projection"] == pytest.approx(0.2)
    assert row["encoder"] == "SigLIP" and row["encoder_minus_best"] == pytest.approx(0.1)  # no pairing: every reference
    assert pd.isna(row["tower"])
    assert (row["oracle"], row["noise"]) == (0.9, 0.05)
    assert row["heldout_layer"] == "–" and pd.isna(row["heldout_test"])  # no split rows


PAIRING = {
    "llava_onevision": {"references": ["siglip"], "note": ""},
    "llava_next": {"references": ["clip"], "note": ""},
    "qwen2_5_vl": {"references": [], "note": "Qwen2.5-VL has no public pre-fine-tuning encoder"},
}


def _paired_frame() -> pd.DataFrame:
    return pd.DataFrame(
        [row for model in PAIRING for row in _rows(model, "values", [(0, 0.2), (1, 0.5)])]
        + [row for model, tower in zip(PAIRING, (0.45, 0.35, 0.25)) for row in _rows(model, "tower", [(-2, tower)])]
        + _rows("siglip", "siglip", [(2, 0.6)])
        + _rows("clip", "clip", [(2, 0.7)])
    )


def test_best_layers_pairs_each_model_with_its_own_tower_and_encoder():
    table = best_layers.summarise(_paired_frame(), PAIRING).set_index("model")
    assert table.loc["LLaVA-OneVision", "encoder"] == "SigLIP"
    assert table.loc["LLaVA-OneVision", "encoder_minus_best"] == pytest.approx(0.1)
    assert table.loc["Llama-3-LLaVA-NeXT", "encoder"] == "CLIP ViT-L/14-336"
    assert table.loc["Llama-3-LLaVA-NeXT", "encoder_minus_best"] == pytest.approx(0.2)
    assert table.loc["Qwen2.5-VL", "encoder"] == "none public" and pd.isna(table.loc["Qwen2.5-VL", "encoder_score"])
    assert table["tower"].to_dict() == {"LLaVA-OneVision": 0.45, "Llama-3-LLaVA-NeXT": 0.35, "Qwen2.5-VL": 0.25}
    assert table.loc["Qwen2.5-VL", "tower_minus_best"] == pytest.approx(-0.25)


def test_paired_figures_and_tables_draw_each_encoder_in_its_models_colour_and_print_the_note(tmp_path):
    path = tmp_path / "probes.csv"
    _paired_frame().to_csv(path, index=False)
    ax = plt.figure().add_subplot()
    layerwise.draw_curves(ax, _paired_frame(), pairing=PAIRING)
    labels = ax.get_legend_handles_labels()[1]
    assert "SigLIP (encoder of LLaVA-OneVision)" in labels
    assert "CLIP ViT-L/14-336 (encoder of Llama-3-LLaVA-NeXT)" in labels
    assert "Qwen2.5-VL tower" in labels and "SigLIP" not in labels
    plt.close("all")
    layerwise.plot(path, [tmp_path / "f.png"], "smoke", "smoke", pairing=json.dumps(PAIRING))
    footer = Provenance.from_results(_paired_frame(), "smoke", "smoke", pairing=PAIRING).footer()
    assert footer.endswith("| Qwen2.5-VL has no public pre-fine-tuning encoder")
    best_layers.write(path, tmp_path / "t", "smoke", "smoke", pairing=json.dumps(PAIRING))
    assert "Qwen2.5-VL has no public pre-fine-tuning encoder" in (tmp_path / "t.md").read_text()


def test_best_layers_held_out_layer_is_chosen_on_validation_and_scored_on_test():
    frame = pd.DataFrame(
        _rows("llava_onevision", "values", [(0, 0.2), (1, 0.5), (2, 0.4)])
        + _rows("llava_onevision", "values", [(0, 0.1), (1, 0.6), (2, 0.3)], metric="jaccard/split=validation")
        + _rows("llava_onevision", "values", [(0, 0.3), (1, 0.4), (2, 0.5)], metric="jaccard/split=test")
        + _rows("llava_onevision", "projection", [(-1, 0.3)])
        + _rows("llava_onevision", "projection", [(-1, 0.35)], metric="jaccard/split=test")
    )
    (row,) = best_layers.summarise(frame).to_dict("records")
    assert row["heldout_layer"] == "1/3" and (row["heldout_test"], row["oracle_test"]) == (0.4, 0.5)
    assert row["heldout_gain_over_projection"] == pytest.approx(0.05)


def test_honest_equals_oracle_when_validation_is_the_test():
    test = pd.Series([0.3, 0.7, 0.7, 0.2], index=[0, 1, 2, 3])
    layer, honest, oracle = best_layers.held_out_choice(test, test)
    assert (layer, honest, oracle) == (1, 0.7, 0.7)
    layer, honest, oracle = best_layers.held_out_choice(pd.Series([0.9, 0.1, 0.1, 0.1], index=test.index), test)
    assert (layer, honest, oracle) == (0, 0.3, 0.7)


def test_task_curves_show_summary_metrics_headline_first():
    metrics = ["j", "j&f", "f", "j&f/clip=a", "j/clip=a"]
    assert task_curves.summary_metrics(metrics, "temporal_corr") == ["j&f", "f", "j"]


def test_layerwise_refuses_a_task_missing_from_the_results(tmp_path):
    path = tmp_path / "probes.csv"
    pd.DataFrame(_rows("llava_onevision", "values", [(0, 0.2)])).to_csv(path, index=False)
    with pytest.raises(ValueError, match="no semantic_seg rows"):
        layerwise.plot(path, [tmp_path / "f.png"], "smoke", "smoke", tasks="coseg,semantic_seg")


# --- paper versus replication ------------------------------------------------------------------------


def test_the_only_reported_number_is_art_style():
    entries = paper_comparison.load_reported(ROOT / "config" / "paper_reported.yaml")
    reported = {e["id"]: e["reported"] for e in entries if e["reported"] is not None}
    # one number of the paper, set against both read-outs (the paper does not say which it used)
    assert reported == {"blink/art_style/not_surfaced": 0.333, "blink/art_style/not_surfaced/mean": 0.333}
    assert all(e["source"] for e in entries)


def test_comparison_by_hand():
    entries = [
        {"id": "a", "quantity": "q", "source": "s", "reported": 0.4,
         "replicated": {"table": "probes", "statistic": "max", "where": {"model": "llava_onevision", "metric": "jaccard"}}},
        {"id": "b", "quantity": "q", "source": "s", "reported": None,
         "replicated": {"table": "probes", "statistic": "value", "where": {"representation": "projection"}}},
        {"id": "c", "quantity": "q", "source": "s", "reported": 0.333, "replicated": None},
        {"id": "d", "quantity": "q", "source": "s", "reported": None,
         "replicated": {"table": "probes", "statistic": "max", "where": {"model": "qwen2_5_vl"}}},
    ]
    frame = pd.DataFrame(
        _rows("llava_onevision", "values", [(0, 0.2), (1, 0.5)])
        + _rows("llava_onevision", "projection", [(-1, 0.3)])
    )
    table = paper_comparison.compare(entries, {"probes": frame}).set_index("id")
    assert table.loc["a", "replication"] == 0.5 and table.loc["a", "difference"] == pytest.approx(0.1)
    assert table.loc["b", "replication"] == 0.3 and pd.isna(table.loc["b", "difference"])
    assert table["status"].to_dict() == {
        "a": "compared",
        "b": "not reported by the paper",
        "c": "not replicated by a rule yet",
        "d": "no matching rows in this run",
    }


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"id": "x", "quantity": "q", "source": "s", "reported": "33 %", "replicated": None}, "x: reported must be"),
        ({"id": "x", "quantity": "q", "reported": None, "replicated": None}, "x: expected exactly the keys"),
        ({"id": "x", "quantity": "q", "source": "s", "reported": None,
          "replicated": {"table": "probes", "statistic": "max", "where": {"modle": "m"}}},
         r"x: unknown result column\(s\) \['modle'\]"),
    ],
)
def test_a_malformed_entry_is_named(tmp_path, entry, message):
    path = tmp_path / "reported.yaml"
    path.write_text(yaml.safe_dump({"entries": [entry]}))
    with pytest.raises(ValueError, match=message):
        paper_comparison.load_reported(path)


# --- the workflow produces exactly the declared figures and tables -----------------------------------


@pytest.fixture(scope="module")
def declared_outputs() -> set[str]:
    """The figure and table files the `all` rule asks for, from one dry run (common.smk's lists)."""
    result = snakemake(["all", "--dry-run", "--forcerun", "all", "--rerun-triggers", "mtime"], ROOT, timeout=120)
    assert result.returncode == 0, failure_details(result)
    job = result.stdout[result.stdout.index("rule all:"):]
    inputs = job.split("input:", 1)[1].splitlines()[0]
    return {path.strip() for path in inputs.split(",") if path.strip().startswith(("figures/", "paper_tables/"))}


CONTROLS_RUN_ONLY = {"controls"}


def registry_name(stem: str, registry: dict) -> str | None:
    """The figure/table module behind a file stem: its own name or a prefix ("task_curves_coseg")."""
    names = [name for name in registry if stem == name or stem.startswith(name + "_")]
    return max(names, key=len) if names else None


@pytest.mark.slow
def test_every_declared_item_has_a_module_and_every_module_an_item(declared_outputs):
    kinds = (("figures/", cli.FIGURES, {"pdf", "png"}), ("paper_tables/", cli.TABLES, {"csv", "md", "tex"}))
    for folder, registry, formats in kinds:
        files = [Path(p) for p in declared_outputs if p.startswith(folder)]
        stems = {f.stem for f in files}
        used = {registry_name(stem, registry) for stem in stems}
        assert None not in used, [s for s in stems if registry_name(s, registry) is None]
        expected = set(registry) - CONTROLS_RUN_ONLY  # made by the controls run (config/controls.yaml)
        assert used == expected, f"registered but never produced: {expected - used}"
        for stem in stems:
            assert {f.suffix[1:] for f in files if f.stem == stem} == formats, stem


@pytest.mark.slow
def test_smoke_run_produces_exactly_the_declared_figures_and_tables(reference_run, declared_outputs):
    project, _ = reference_run
    produced = {
        path.relative_to(project).as_posix()
        for folder in ("figures", "paper_tables")
        for path in (project / folder / "smoke").rglob("*")
        if path.is_file()
    }
    assert produced == declared_outputs


@pytest.mark.slow
def test_report_has_every_figure_with_a_caption(reference_report, declared_outputs):
    _, log = reference_report
    added = set(re.findall(r"Adding (\S+) \(", log))
    figures = {Path(p).name for p in declared_outputs if p.endswith(".png")}
    assert figures <= added, figures - added
    for caption in (ROOT / "workflow" / "report").glob("*.rst"):
        assert caption.read_text().strip()


def test_comparison_reads_a_named_column_of_another_result_table():
    frame = pd.DataFrame({"model": ["a", "a"], "subtask": ["Art_Style", "Counting"], "not_surfaced": [0.25, 0.5]})
    selector = {"table": "interventions/not_surfaced", "statistic": "value", "column": "not_surfaced",
                "where": {"model": "a", "subtask": "Art_Style"}}
    entry = {"id": "x", "quantity": "q", "source": "s", "reported": 0.333, "replicated": selector}
    row = paper_comparison.compare([entry], {"interventions/not_surfaced": frame}).iloc[0]
    assert row["replication"] == 0.25 and row["difference"] == pytest.approx(0.25 - 0.333)
    with pytest.raises(ValueError, match=r"has no column\(s\) \['readout'\]"):
        paper_comparison.replicated_value(frame, {**selector, "where": {"readout": "gram"}}, "x")


def test_comparison_reads_a_key_of_a_json_record():
    record = {"projection_quality": {"spearman": -0.5, "pearson": None}}
    entries = [{"id": i, "quantity": "q", "source": "s", "reported": None,
                "replicated": {"record": "interventions/correlation", "key": f"projection_quality.{key}"}}
               for i, key in (("rho", "spearman"), ("r", "pearson"))]
    table = paper_comparison.compare(entries, {"interventions/correlation": record}).set_index("id")
    assert table.loc["rho", "replication"] == -0.5 and table.loc["rho", "status"] == "not reported by the paper"
    assert table.loc["r", "status"] == "no matching rows in this run"  # null: undefined over too few models
    with pytest.raises(ValueError, match=r"x: record interventions/correlation has no key 'lm_gain.rho'"):
        paper_comparison.record_value(record, {"record": "interventions/correlation", "key": "lm_gain.rho"}, "x")


def test_every_reported_entry_reads_a_rule_output():
    entries = paper_comparison.load_reported(ROOT / "config" / "paper_reported.yaml")
    assert all(entry["replicated"] for entry in entries)
    inputs = paper_comparison.result_tables(ROOT / "config" / "paper_reported.yaml", "smoke")
    assert "results/smoke/interventions/correlation.json" in inputs
