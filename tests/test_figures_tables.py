import matplotlib.pyplot as plt
import pandas as pd

from imagekv.figures.style import SMOKE_MARK, Provenance, save, stamp
from imagekv.tables import write_table

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


def test_saved_figures_are_byte_identical_across_saves(tmp_path):
    def draw(stem):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        stamp(fig, PROVENANCE)
        save(fig, [tmp_path / f"{stem}.pdf", tmp_path / f"{stem}.png"])

    draw("a")
    draw("b")
    for ext in ("pdf", "png"):
        assert (tmp_path / f"a.{ext}").read_bytes() == (tmp_path / f"b.{ext}").read_bytes()
