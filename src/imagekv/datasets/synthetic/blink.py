"""Synthetic BLINK: multiple-choice items whose answer the images decide, in the hub's parquet layout.

One `<Subtask>/<split>-00000-of-00001.parquet` per subtask with the published columns, the images as
JPEG bytes in the `Image` struct {bytes, path} and the `huggingface` schema metadata the `datasets`
library writes (see imagekv.datasets.blink for which of these details are read and which inferred).

Art_Style: the right candidate shares the reference's style (texture and palette) but not its shape;
the wrong one shares the shape in another style. Visual_Similarity: the right candidate is the same
class of object elsewhere, the wrong one another class. Counting: how many copies of one shape.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from imagekv.datasets.blink import PUBLISHED_SUBTASKS
from imagekv.datasets.schema import BlinkItem
from imagekv.datasets.synthetic import SyntheticTruth
from imagekv.datasets.synthetic.draw import (
    COLOURS,
    JPEG_QUALITY,
    SHAPES,
    TEXTURES,
    Style,
    backdrop,
    class_style,
    paint,
    random_placement,
    random_size,
    render,
    shape_mask,
)
from imagekv.datasets.synthetic.refcoco import place_in_slots
from imagekv.io import atomic_path

LETTERS = "ABCD"
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SCHEMA = pa.schema(
    [
        ("idx", pa.string()),
        ("question", pa.string()),
        ("sub_task", pa.string()),
        *[(f"image_{k}", IMAGE_TYPE) for k in range(1, 5)],
        ("choices", pa.list_(pa.string())),
        ("answer", pa.string()),
        ("prompt", pa.string()),
        ("explanation", pa.string()),
    ]
)
STRING = {"dtype": "string", "_type": "Value"}
# The features record `datasets` keeps in the parquet schema metadata under b"huggingface".
FEATURES = {
    "idx": STRING,
    "question": STRING,
    "sub_task": STRING,
    **{f"image_{k}": {"_type": "Image"} for k in range(1, 5)},
    "choices": {"feature": STRING, "_type": "Sequence"},
    "answer": STRING,
    "prompt": STRING,
    "explanation": STRING,
}
TWO_CANDIDATES = ("the second image", "the third image")


def art_image(rng: np.random.Generator, cfg: dict, style: int, shape: str) -> np.ndarray:
    """A "painting" of `shape`: style `style` fixes the textures and palette of backdrop and object."""
    colours = list(COLOURS)
    canvas_style = Style("square", colours[(2 * style + 1) % len(colours)], TEXTURES[style % len(TEXTURES)])
    object_style = Style(shape, colours[(2 * style) % len(colours)], TEXTURES[(style + 2) % len(TEXTURES)])
    size = random_size(rng, cfg)
    pixels = backdrop(rng, size)
    paint(pixels, np.ones(size, dtype=bool), canvas_style)
    placed = random_placement(rng, object_style, size)
    paint(pixels, shape_mask(shape, size, placed.center, placed.radius), object_style)
    return pixels


def art_style(rng: np.random.Generator, cfg: dict) -> tuple[str, list[np.ndarray], list[str], int]:
    style, other_style = (int(s) for s in rng.choice(len(TEXTURES), size=2, replace=False))
    shape, other_shape = (str(s) for s in rng.choice(SHAPES, size=2, replace=False))
    right, wrong = art_image(rng, cfg, style, other_shape), art_image(rng, cfg, other_style, shape)
    answer = int(rng.integers(2))
    candidates = [right, wrong] if answer == 0 else [wrong, right]
    question = (
        "Some common art painting styles are Realism, Impressionism, Expressionism, Pop Art and Cubism. "
        "Taking the first image as the reference, which of the second or the third image shares its style?"
    )
    return question, [art_image(rng, cfg, style, shape), *candidates], list(TWO_CANDIDATES), answer


def visual_similarity(rng: np.random.Generator, cfg: dict) -> tuple[str, list[np.ndarray], list[str], int]:
    same, other = (int(s) for s in rng.choice(20, size=2, replace=False))

    def draw(style: int) -> np.ndarray:
        size = random_size(rng, cfg)
        return render(rng, size, [random_placement(rng, class_style(style), size)])[0]

    answer = int(rng.integers(2))
    candidates = [draw(same), draw(other)] if answer == 0 else [draw(other), draw(same)]
    question = "Taking the first image as the reference, which of the second or the third image is most similar to it?"
    return question, [draw(same), *candidates], list(TWO_CANDIDATES), answer


def counting(rng: np.random.Generator, cfg: dict) -> tuple[str, list[np.ndarray], list[str], int]:
    style, count = int(rng.integers(20)), int(rng.integers(1, 5))
    size = random_size(rng, cfg)
    pixels = render(rng, size, place_in_slots(rng, [style] * count, size))[0]
    return f"How many {class_style(style).shape}s are in the image?", [pixels], ["1", "2", "3", "4"], count - 1


SUBTASKS = {"Art_Style": art_style, "Visual_Similarity": visual_similarity, "Counting": counting}


def jpeg(pixels: np.ndarray) -> tuple[bytes, np.ndarray]:
    """JPEG bytes of `pixels` and the pixels they decode to (what a reader of the file sees)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue(), np.array(Image.open(io.BytesIO(buffer.getvalue())))


def write(root: Path, cfg: dict, rng: np.random.Generator) -> SyntheticTruth:
    split = cfg.get("split", "val")
    subtasks = list(cfg.get("subtasks") or PUBLISHED_SUBTASKS)  # the loader's order
    missing = [s for s in subtasks if s not in SUBTASKS]
    if missing:
        raise ValueError(f"the synthetic BLINK draws only {', '.join(sorted(SUBTASKS))}; set datasets.blink.subtasks"
                         f" to some of them (it asks for {missing})")
    schema = SCHEMA.with_metadata({b"huggingface": json.dumps({"info": {"features": FEATURES}}).encode()})
    items, pixels_by_id = [], {}
    for subtask in subtasks:
        rows = []
        for index in range(int(cfg.get("items_per_subtask", 4))):
            question, images, choices, answer = SUBTASKS[subtask](rng, cfg)
            idx = f"{split}_{subtask}_{index + 1}"
            options = "\n".join(f"({LETTERS[k]}) {choice}" for k, choice in enumerate(choices))
            row = {
                "idx": idx,
                "question": question,
                "sub_task": subtask,
                "choices": choices,
                "answer": f"({LETTERS[answer]})",
                "prompt": f"{question}\nSelect from the following choices.\n{options}",
                "explanation": "",
            }
            image_ids = tuple(f"{idx}/image_{k + 1}" for k in range(len(images)))
            row |= {f"image_{k}": None for k in range(1, 5)}
            for k, (image_id, pixels) in enumerate(zip(image_ids, images), start=1):
                data, pixels_by_id[image_id] = jpeg(pixels)
                row[f"image_{k}"] = {"bytes": data, "path": f"{idx}_{k}.jpg"}
            rows.append(row)
            items.append(BlinkItem(idx, subtask, question, tuple(choices), LETTERS[answer], image_ids, row["prompt"]))
        with atomic_path(root / subtask / f"{split}-00000-of-00001.parquet") as tmp:
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    return SyntheticTruth(samples=items, image_ids=sorted(pixels_by_id), pixels=pixels_by_id)
