"""E5 text prefixes (SPEC E5): fixed strings, and templates filled from each dataset item.

A `prefixes:` entry is a template when it holds format fields, e.g. "Find: {text}.\\n": SPEC E5 (i)
"Find: {class name}." for T3 and "Find: {referring expression}." for T4 are both the query's text.
A template is filled per text query (T3, T4), so its store holds one extraction per item, keyed
by `item_key` (an image with several queries, as in RefCOCO, is extracted once per query). Fields:
`text` (the class name or expression) and `category` (the class: ImageNet-S wnid, COCO category).
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where needed: the Snakefile reads is_template (via imagekv.plan) on every run
    from imagekv.datasets.schema import TextQuery

ITEM_FIELDS = ("text", "category")


@dataclass(frozen=True)
class PrefixItem:
    """One extraction of a per-item store: its image, its filled prefix, and its query, read after
    the image in the same sequence (SPEC T3 (b), E5 in-context)."""

    image_id: str
    prefix: str
    query: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def template_fields(prefix: str, where: str = "prefix") -> tuple[str, ...]:
    """The format fields of `prefix` (none for a fixed string); an unknown field is an error."""
    try:
        fields = tuple(name for _, name, _, _ in string.Formatter().parse(prefix) if name is not None)
    except ValueError as error:
        raise ValueError(
            f"{where}: {prefix!r} is not a valid template ({error}); write a literal brace as {{{{ or }}}}"
        ) from error
    unknown = sorted(set(fields) - set(ITEM_FIELDS))
    if unknown:
        raise ValueError(f"{where}: {prefix!r} names fields {unknown}; a prefix template may use {list(ITEM_FIELDS)}")
    return fields


def is_template(prefix: str) -> bool:
    return bool(template_fields(prefix))


def item_key(query: TextQuery) -> str:
    """The store key of one query's extraction: its image and its query id."""
    return f"{query.image_id}|{query.query_id}"


def fill(prefix: str, query: TextQuery) -> str:
    """`prefix` with the query's fields; a fixed string as it is."""
    template_fields(prefix)
    return prefix.format(text=query.text, category=query.category) if is_template(prefix) else prefix


def prefix_items(samples: Iterable, prefix: str, dataset: str) -> dict[str, PrefixItem]:
    """item key -> its extraction, for every text query among `samples`."""
    from imagekv.datasets.schema import TextQuery  # numpy and PIL: not at import (see above)

    items = {}
    for sample in samples:
        if not isinstance(sample, TextQuery):
            raise ValueError(f"dataset {dataset!r} yields {type(sample).__name__} samples; per-item prefixes "
                             "need text queries (T3, T4)")
        key = item_key(sample)
        if key in items:
            raise ValueError(f"dataset {dataset!r}: two queries share the item key {key!r}")
        items[key] = PrefixItem(sample.image_id, fill(prefix, sample), sample.text)
    if not items:
        raise ValueError(f"dataset {dataset!r} has no text queries to extract per item")
    return items


def item_samples(samples: Iterable[TextQuery], in_context: bool) -> list[TextQuery]:
    """The queries reading a per-item store: each query's image features are those extracted with
    its own prefix; with `in_context`, its text value is the one read after the image in that
    same sequence, else the fixed text-only value (the store the probe pairs with the images)."""
    return [dataclasses.replace(q, features_id=item_key(q), text_id=item_key(q) if in_context else "")
            for q in samples]
