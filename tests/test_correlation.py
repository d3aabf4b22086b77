import matplotlib.pyplot as plt
import pytest

from imagekv.figures import correlation as figure
from imagekv.interventions.correlation import correlate, normalised_quality, projection_correlation
from imagekv.io import write_json


def test_normalised_quality_by_hand():
    metrics = {"a": {"t1": 0.2, "t2": 10.0, "t3": 1.0}, "b": {"t1": 0.4, "t2": 30.0, "t3": 1.0},
               "c": {"t1": 0.6, "t2": 20.0, "t3": 1.0}}
    quality = normalised_quality(metrics)
    # t1 -> a 0, b 0.5, c 1; t2 -> a 0, b 1, c 0.5; t3 is constant and left out.
    assert quality["score"] == pytest.approx({"a": 0.0, "b": 0.75, "c": 0.75})
    assert quality["constant_tasks"] == ["t3"]
    with pytest.raises(KeyError, match="missing"):
        normalised_quality({"a": {"t1": 1.0}, "b": {"t2": 1.0}})


def test_correlations_are_flagged_descriptive_and_undefined_when_constant():
    result = correlate({"a": 0.0, "b": 0.5, "c": 1.0}, {"a": 0.3, "b": 0.4, "c": 0.8})
    assert result["spearman"] == pytest.approx(1.0)
    assert 0 < result["pearson"] < 1 and result["descriptive"] and result["n"] == 3
    assert correlate({"a": 1.0, "b": 1.0}, {"a": 0.1, "b": 0.2})["pearson"] is None


def test_both_readings_of_e2():
    projection = {"a": {"t": 0.1}, "b": {"t": 0.3}, "c": {"t": 0.2}}
    best = {"a": {"t": 0.5}, "b": {"t": 0.4}, "c": {"t": 0.6}}
    blink = {"a": 0.40, "b": 0.50, "c": 0.45}
    result = projection_correlation(projection, best, blink)
    assert result["projection_quality"]["spearman"] == pytest.approx(1.0)
    # Gains: a 0.4, b 0.1, c 0.4 -> normalised a 1, b 0, c 1.
    assert result["lm_gain"]["x"] == pytest.approx([1.0, 0.0, 1.0])


def test_figure_shows_a_labelled_point_per_model_and_the_correlations_as_descriptive(tmp_path):
    """The scatter draws exactly the JSON's points and prints its correlations, marked descriptive."""
    result = projection_correlation({"a": {"t": 0.1}, "b": {"t": 0.3}, "c": {"t": 0.2}},
                                    {"a": {"t": 0.5}, "b": {"t": 0.4}, "c": {"t": 0.6}},
                                    {"a": 0.40, "b": 0.50, "c": 0.45})
    fig, ax = plt.subplots()
    figure.draw_reading(ax, result["projection_quality"])
    drawn = [tuple(c.get_offsets()[0]) for c in ax.collections]
    assert drawn == list(zip(result["projection_quality"]["x"], result["projection_quality"]["y"]))
    texts = [t.get_text() for t in ax.texts]
    assert {"a", "b", "c"} <= set(texts)
    assert "Spearman ρ = 1.00" in texts[-1] and "(n = 3, descriptive)" in texts[-1]
    assert "undefined" in figure.correlation_label({**result["lm_gain"], "pearson": None})
    plt.close(fig)
    path = tmp_path / "correlation.json"
    write_json(path, {"spec": {"models": ["a", "b", "c"], "subtask": "overall", "condition": "none"},
                      "tasks": ["t"], **result})
    figure.plot(path, [tmp_path / "c.png"], "smoke", "smoke")
    assert (tmp_path / "c.png").stat().st_size > 0
