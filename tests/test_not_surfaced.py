import numpy as np
import pytest
import torch

from imagekv.interventions.not_surfaced import layer_similarities, not_surfaced_report, readout_choices


def test_mean_readout_picks_the_candidate_with_the_same_mean_token():
    # 2 layers, a 2x2 grid of 3-d value tokens. Layer 0: candidate B shares the reference's mean
    # direction; layer 1: candidate A does.
    reference = torch.zeros(2, 2, 2, 3)
    reference[0, ..., 0] = 1.0
    reference[1, ..., 1] = 1.0
    candidate_a = torch.zeros(2, 2, 2, 3)
    candidate_a[0, ..., 2] = 1.0
    candidate_a[1, ..., 1] = 2.0
    candidate_b = torch.zeros(2, 2, 2, 3)
    candidate_b[0, ..., 0] = 3.0
    candidate_b[1, ..., 2] = 1.0
    similarities = layer_similarities(reference, [candidate_a, candidate_b], "mean")
    assert similarities.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert readout_choices(similarities).tolist() == [1, 0]


def test_gram_readout_matches_hand_computed_style_cosine():
    # One layer, two tokens. Reference tokens (1,0),(0,1): Gram = I/2. Candidate A tokens (1,0),(1,0):
    # Gram = diag(1,0); cosine with I/2 = 0.5 / (sqrt(0.5) * 1) = 1/sqrt(2). Candidate B tokens
    # (2,0),(0,-2): Gram = 2I, cosine 1 although its mean token points elsewhere.
    reference = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    candidate_a = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    candidate_b = torch.tensor([[[2.0, 0.0], [0.0, -2.0]]])
    gram = layer_similarities(reference, [candidate_a, candidate_b], "gram")
    assert gram[:, 0].tolist() == pytest.approx([2**-0.5, 1.0])
    assert readout_choices(gram).tolist() == [1]
    with pytest.raises(ValueError, match="unknown read-out kind"):
        layer_similarities(reference, [candidate_a], "median")


def test_ties_go_to_the_first_option():
    assert readout_choices(torch.tensor([[0.5, 0.2], [0.5, 0.9]])).tolist() == [0, 1]


def test_not_surfaced_rates_on_a_hand_made_case():
    truth = np.array([0, 1, 0, 1])
    model = np.array([0, 0, 1, 0])  # right on q0 only
    # Layer 10: right on q0, q1, q2 (q1, q2 are model-wrong). Layer 20: right on q3 only.
    readout = np.array([[0, 1], [1, 0], [0, 1], [0, 1]])
    report = not_surfaced_report(readout, truth, model, layers=[10, 20], split_seed=0)
    assert report["model_accuracy"] == 0.25
    assert report["readout_accuracy"] == [0.75, 0.25]
    assert report["not_surfaced"] == [0.5, 0.25]
    assert report["oracle"] == {"layer": 10, "readout_accuracy": 0.75, "not_surfaced": 0.5}

    # Any half of two questions has layer-10 accuracy >= 1/2 >= layer-20 accuracy, and ties go to the
    # first layer, so every split chooses layer 10 and the honest rates equal layer 10's.
    for seed in range(5):
        honest = not_surfaced_report(readout, truth, model, layers=[10, 20], split_seed=seed)["honest"]
        assert honest == {"split_seed": seed, "layers_chosen": [10, 10], "readout_accuracy": 0.75, "not_surfaced": 0.5}


def test_honest_layer_is_chosen_on_the_other_half():
    # Two questions: layer 0 is right only on q0, layer 1 only on q1, and the model is always wrong.
    # Each half holds one question and picks the layer right on it, which is then wrong on the other.
    report = not_surfaced_report(np.array([[0, 1], [0, 1]]), [0, 1], [1, 0], layers=[0, 1])
    assert report["oracle"]["not_surfaced"] == 0.5
    assert report["honest"]["not_surfaced"] == 0.0


def test_report_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="readout"):
        not_surfaced_report(np.zeros((3, 2)), [0, 1, 0], [0, 1], layers=[0, 1])
