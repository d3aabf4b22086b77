"""Synthetic BLINK: multiple-choice items whose answer the images decide, in the hub's parquet layout.

One `<Subtask>/<split>-00000-of-00001.parquet` per subtask with the published columns, the images as
JPEG bytes in the `Image` struct {bytes, path} and the `huggingface` schema metadata the `datasets`
library writes (see imagekv.datasets.blink for which of these details are read and which inferred).

Art_Style: the right candidate shares the reference's style (texture and palette) but not its shape;
the wrong one shares the shape in another style. Visual_Similarity: the right candidate is the same
class of object elsewhere, the wrong one another class. Counting: how many copies of one shape.

The correspondence subtasks have two images with the points drawn on them as BLINK draws them
(imagekv.datasets.blink_markers): a ring labelled REF on the first, four rings labelled A-D on the
second, choices "Point A".."Point D". Visual_Correspondence: the second image is another crop of the
same scene, lit differently, and the right point is the same scene point. Semantic_Correspondence:
the reference marks the centre of an object; the right point the centre of another object of the
same class. Functional_Correspondence: the right point is the centre of an object of another shape
but the same colour and texture (the same "function"). Wrong points fall anywhere else.
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
from imagekv.datasets.blink_markers import CANDIDATE_LABELS, REFERENCE_LABEL, draw_marker, marker_footprint
from imagekv.datasets.schema import OPTION_LETTERS, BlinkItem
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


# BLINK's question wording of the correspondence subtasks (the hub's `prompt` column as public BLINK
# users quote it; see imagekv.datasets.blink_markers); the functional one is shortened [I].
CORRESPONDENCE_QUESTIONS = {
    "Visual_Correspondence": (
        "A point is circled on the first image, labeled with REF. We change the camera position or lighting and "
        "shoot the second image. You are given multiple red-circled points on the second image, choices of "
        '"A, B, C, D" are drawn beside each circle. Which point on the second image corresponds to the point in '
        "the first image?"
    ),
    "Semantic_Correspondence": (
        "Humans can find corresponding points for different objects in the same category. Given the following two "
        "images, a reference point is annotated on the first image, labeled with REF. You are given multiple "
        'red-circled points on the second image, choices of "A, B, C, D" are drawn beside each circle. Which point '
        "is corresponding to the reference point?"
    ),
    "Functional_Correspondence": (
        "Humans can find corresponding points for the same action between different objects. Given the following "
        "two images, a reference point is annotated on the first image, labeled with REF. You are given multiple "
        'red-circled points on the second image, choices of "A, B, C, D" are drawn beside each circle. Which point '
        "is corresponding to the reference point, if we use both items for the same action?"
    ),
}
POINT_CHOICES = [f"Point {label}" for label in CANDIDATE_LABELS]
MAX_DRAWS = 100
# Classes drawn under markers: none in or near the markers' red, which would swallow a ring.
UNMARKED_CLASSES = [index for index in range(20) if class_style(index).colour not in ("red", "orange")]


def marked_size(rng: np.random.Generator, cfg: dict) -> tuple[int, int]:
    """Twice the twin's usual size: room for four labelled markers."""
    height, width = random_size(rng, cfg)
    return 2 * height, 2 * width


def spaced_points(rng: np.random.Generator, size: tuple[int, int], taken: list, count: int) -> list:
    """`count` random (x, y) points whose markers touch neither each other, those of `taken`, nor the border."""
    reach = marker_footprint(size, CANDIDATE_LABELS[-1])
    points = list(taken)
    for _ in range(MAX_DRAWS * count):
        point = (float(rng.uniform(reach, size[1] - reach)), float(rng.uniform(reach, size[0] - reach)))
        if all(np.hypot(point[0] - x, point[1] - y) > 2 * reach for x, y in points):
            points.append(point)
            if len(points) == len(taken) + count:
                return points[len(taken) :]
    raise ValueError(f"cannot space {count} markers in a {size[1]}x{size[0]} image; raise datasets.blink.image_size")


def mark(rng: np.random.Generator, reference: np.ndarray, candidates: np.ndarray, ref_point: tuple,
         right_point: tuple, others: list) -> tuple[list[np.ndarray], int]:
    """Both images with the REF marker and the four lettered ones drawn (the right point under a
    random letter), and the index of that letter."""
    answer = int(rng.integers(len(CANDIDATE_LABELS)))
    points = list(others)
    points.insert(answer, right_point)
    first, second = Image.fromarray(reference), Image.fromarray(candidates)
    draw_marker(first, ref_point, REFERENCE_LABEL)
    for label, point in zip(CANDIDATE_LABELS, points):
        draw_marker(second, point, label)
    return [np.array(first), np.array(second)], answer


def visual_correspondence(rng: np.random.Generator, cfg: dict) -> tuple[str, list[np.ndarray], list[str], int]:
    height, width = marked_size(rng, cfg)
    shift = (int(rng.integers(8, height // 4)), int(rng.integers(8, width // 4)))
    canvas = (height + shift[0], width + shift[1])
    styles = [int(s) for s in rng.choice(UNMARKED_CLASSES, size=3, replace=False)]
    scene = render(rng, canvas, [random_placement(rng, class_style(s), canvas) for s in styles])[0]
    first = scene[:height, :width]
    second = np.clip(scene[shift[0] :, shift[1] :] * rng.uniform(0.75, 1.25), 0, 255).astype(np.uint8)
    # the reference: a point both crops show, away from their borders
    (point,) = spaced_points(rng, (height - shift[0], width - shift[1]), [], 1)
    ref_point = (point[0] + shift[1], point[1] + shift[0])
    others = spaced_points(rng, (height, width), [point], len(CANDIDATE_LABELS) - 1)
    images, answer = mark(rng, first, second, ref_point, point, others)
    return CORRESPONDENCE_QUESTIONS["Visual_Correspondence"], images, list(POINT_CHOICES), answer


def object_correspondence(subtask: str, same_shape: bool):
    """Semantic (same class) or functional (same colour and texture, other shape) correspondence."""

    def draw(rng: np.random.Generator, cfg: dict) -> tuple[str, list[np.ndarray], list[str], int]:
        size = marked_size(rng, cfg)
        style, clutter = (int(s) for s in rng.choice(UNMARKED_CLASSES, size=2, replace=False))
        reference = random_placement(rng, class_style(style), size)
        first = render(rng, size, [random_placement(rng, class_style(clutter), size), reference])[0]
        own = class_style(style)
        shape = own.shape if same_shape else str(rng.choice([s for s in SHAPES if s != own.shape]))
        right = random_placement(rng, Style(shape, own.colour, own.texture), size)
        second = render(rng, size, [random_placement(rng, class_style(clutter), size), right])[0]
        others = spaced_points(rng, size, [right.center], len(CANDIDATE_LABELS) - 1)
        images, answer = mark(rng, first, second, reference.center, right.center, others)
        return CORRESPONDENCE_QUESTIONS[subtask], images, list(POINT_CHOICES), answer

    return draw


SUBTASKS = {
    "Art_Style": art_style,
    "Visual_Similarity": visual_similarity,
    "Counting": counting,
    "Visual_Correspondence": visual_correspondence,
    "Semantic_Correspondence": object_correspondence("Semantic_Correspondence", same_shape=True),
    "Functional_Correspondence": object_correspondence("Functional_Correspondence", same_shape=False),
}


def jpeg(pixels: np.ndarray) -> tuple[bytes, np.ndarray]:
    """JPEG bytes of `pixels` and the pixels they decode to (what a reader of the file sees). Colour at
    full resolution (4:4:4): chroma subsampling would bleed the thin red markers into saturated objects."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
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
            letter = OPTION_LETTERS[answer]
            options = "\n".join(f"({OPTION_LETTERS[k]}) {choice}" for k, choice in enumerate(choices))
            row = {
                "idx": idx,
                "question": question,
                "sub_task": subtask,
                "choices": choices,
                "answer": f"({letter})",
                "prompt": f"{question}\nSelect from the following choices.\n{options}",
                "explanation": "",
            }
            image_ids = tuple(f"{idx}/image_{k + 1}" for k in range(len(images)))
            row |= {f"image_{k}": None for k in range(1, 5)}
            for k, (image_id, pixels) in enumerate(zip(image_ids, images), start=1):
                data, pixels_by_id[image_id] = jpeg(pixels)
                row[f"image_{k}"] = {"bytes": data, "path": f"{idx}_{k}.jpg"}
            rows.append(row)
            items.append(BlinkItem(idx, subtask, question, tuple(choices), letter, image_ids, row["prompt"]))
        with atomic_path(root / subtask / f"{split}-00000-of-00001.parquet") as tmp:
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    return SyntheticTruth(samples=items, image_ids=sorted(pixels_by_id), pixels=pixels_by_id)
