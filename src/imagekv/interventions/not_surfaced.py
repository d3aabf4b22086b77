"""E6: visual information present in the LM's image values but not surfaced in its answer.

For BLINK subtasks that compare a reference image with candidate images, the value read-out at layer
l embeds each image from its global-grid value tokens and answers with the candidate most similar to
the reference. For the correspondence subtasks, whose options are points drawn on the images, it
embeds each drawn marker from the value tokens under it (the cells of its ring) and answers with the
candidate point most similar to the reference point. A question is "not surfaced" when that
read-out is right and the MLM is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from imagekv.datasets.blink_markers import Marker
from imagekv.grid import TokenGrid

# Subtasks whose options are points marked on image 1 and whose reference is marked on image 0.
MARKED_SUBTASKS = ("Visual_Correspondence", "Semantic_Correspondence", "Functional_Correspondence")
DEFAULT_SPLIT_SEED = 0
UNLOCATED = -1  # the read-out's choice where the markers could not be found: never right


def _tokens(values: torch.Tensor) -> torch.Tensor:
    """[layers, ..., dim] (e.g. [layers, rows, cols, dim]) -> float64 [layers, tokens, dim]."""
    return values.reshape(values.shape[0], -1, values.shape[-1]).double()


def _mean_cosine(reference: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    return torch.cosine_similarity(reference.mean(dim=1), candidate.mean(dim=1), dim=-1)


def _gram_cosine(reference: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """Cosine of the uncentred second-moment (style) matrices X^T X / n, one layer at a time so
    that only one dim x dim matrix per image exists at once."""
    grams = [
        (torch.mm(r.T, r) / len(r), torch.mm(c.T, c) / len(c)) for r, c in zip(reference, candidate)
    ]
    return torch.stack([torch.cosine_similarity(a.flatten(), b.flatten(), dim=0) for a, b in grams])


READOUT_KINDS = {"mean": _mean_cosine, "gram": _gram_cosine}


def layer_similarities(reference: torch.Tensor, candidates: Sequence[torch.Tensor], kind: str) -> torch.Tensor:
    """[options, layers] cosine similarity of each candidate's image embedding to the reference's.

    Inputs are value tokens [layers, ..., dim]. kind "mean": the mean value token; kind "gram": the
    second-moment matrix of the value tokens (the style variant for Art Style).
    """
    if kind not in READOUT_KINDS:
        raise ValueError(f"unknown read-out kind {kind!r}; expected one of {sorted(READOUT_KINDS)}")
    similarity = READOUT_KINDS[kind]
    anchor = _tokens(reference)
    return torch.stack([similarity(anchor, _tokens(candidate)) for candidate in candidates])


def tokens_under(values: torch.Tensor, grid: TokenGrid, marker: Marker) -> torch.Tensor:
    """[layers, n, dim] value tokens under a marker: the cell holding its centre and every cell whose
    centre lies inside its ring."""
    if values.shape[1:3] != (grid.rows, grid.cols):
        raise ValueError(f"values of a {tuple(values.shape[1:3])} grid for a {grid.rows}x{grid.cols} token grid")
    centers = grid.centers()
    inside = np.hypot(centers[:, 0] - marker.x, centers[:, 1] - marker.y) <= marker.radius
    row, col = grid.token_of_point(marker.x, marker.y)
    inside[row * grid.cols + col] = True
    return values.reshape(values.shape[0], -1, values.shape[-1])[:, torch.from_numpy(np.nonzero(inside)[0])]


def readout_choices(similarities: torch.Tensor) -> torch.Tensor:
    """[layers] chosen option per layer: the most similar candidate, the first one on ties."""
    best = similarities.max(dim=0, keepdim=True).values
    return (similarities == best).int().argmax(dim=0)  # argmax of a 0/1 tensor returns the first 1


def not_surfaced_report(
    readout: np.ndarray,
    truth: Sequence[int],
    model_choice: Sequence[int],
    layers: Sequence[int],
    split_seed: int = DEFAULT_SPLIT_SEED,
) -> dict:
    """Read-out accuracy and the not-surfaced rate, per layer and at two chosen layers.

    readout: [questions, layers] chosen option of the read-out; truth, model_choice: [questions].
    "oracle" scores every question at the layer with the best read-out accuracy over all questions
    (an upper bound). "honest" splits the questions into two seeded halves and scores each half at
    the layer that is best on the other half, so every question counts once and no question chooses
    its own layer.
    """
    readout, truth, model_choice = np.asarray(readout), np.asarray(truth), np.asarray(model_choice)
    if readout.shape != (len(truth), len(layers)) or model_choice.shape != truth.shape or len(truth) < 2:
        raise ValueError(
            f"need readout [questions >= 2, {len(layers)} layers] and matching answers; got readout "
            f"{readout.shape}, truth {truth.shape}, model {model_choice.shape}"
        )
    readout_right = readout == truth[:, None]
    hidden = readout_right & (model_choice != truth)[:, None]
    order = np.random.default_rng(split_seed).permutation(len(truth))
    halves = (order[: len(truth) // 2], order[len(truth) // 2 :])
    honest_layers = [int(np.argmax(readout_right[half].mean(axis=0))) for half in halves]
    scored_at = np.empty(len(truth), dtype=int)
    scored_at[halves[1]], scored_at[halves[0]] = honest_layers  # each half at the other's best layer
    rows = np.arange(len(truth))
    oracle = int(np.argmax(readout_right.mean(axis=0)))
    return {
        "num_questions": int(len(truth)),
        "layers": [int(layer) for layer in layers],
        "model_accuracy": float((model_choice == truth).mean()),
        "readout_accuracy": readout_right.mean(axis=0).tolist(),
        "not_surfaced": hidden.mean(axis=0).tolist(),
        "oracle": {
            "layer": int(layers[oracle]),
            "readout_accuracy": float(readout_right[:, oracle].mean()),
            "not_surfaced": float(hidden[:, oracle].mean()),
        },
        "honest": {
            "split_seed": split_seed,
            "layers_chosen": [int(layers[i]) for i in honest_layers],
            "readout_accuracy": float(readout_right[rows, scored_at].mean()),
            "not_surfaced": float(hidden[rows, scored_at].mean()),
        },
    }
