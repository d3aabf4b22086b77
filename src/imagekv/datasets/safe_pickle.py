"""Load a pickle that may only hold plain data (RefCOCO's `refs(unc).p`), never running its code.

A pickle can name any importable callable and call it while loading. This unpickler refuses every
global lookup (so no class, function or reduce call can be reached) and every persistent id, then
checks that what was built is made of dict, list, tuple, str, int, float, bool and None only, with
no reference cycle. The pickle's memo may share one object in many places; that is accepted and
costs one visit.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

PLAIN_SCALARS = (str, int, float, bool, type(None))
PLAIN_CONTAINERS = (dict, list, tuple)


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for something beyond plain containers."""


class _PlainUnpickler(pickle.Unpickler):
    def __init__(self, file, source: Path):
        super().__init__(file, encoding="utf-8")  # Python 2 byte strings hold UTF-8 text
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(f"{self.source}: refused global {module}.{name}; only plain containers are allowed")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refused persistent id; only plain containers are allowed")


def _children(item: Any) -> list:
    return [*item.keys(), *item.values()] if isinstance(item, dict) else list(item)


def _check_plain(obj: Any, source: Path) -> None:
    """Refuse anything but plain types, and reference cycles (which no refs file holds and which
    would hang whoever walks the data later). Each object is visited once, however often the
    pickle's memo shares it, so the work is linear in the number of objects the pickle built."""
    done: set[int] = set()
    on_path: set[int] = set()
    stack: list[tuple[Any, list]] = []

    def enter(item: Any) -> None:
        if type(item) in PLAIN_SCALARS:
            return
        if type(item) not in PLAIN_CONTAINERS:
            raise UnsafePickleError(f"{source}: holds a {type(item).__name__}; only plain containers are allowed")
        if id(item) in on_path:
            raise UnsafePickleError(f"{source}: holds a reference cycle; plain data is a tree (shared parts allowed)")
        if id(item) not in done:
            on_path.add(id(item))
            stack.append((item, _children(item)))

    enter(obj)
    while stack:
        item, pending = stack[-1]
        if pending:
            enter(pending.pop())
        else:
            stack.pop()
            on_path.discard(id(item))
            done.add(id(item))


def load_plain_pickle(path: Path) -> Any:
    """The object in pickle file `path`, provided it is plain data; UnsafePickleError otherwise."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"missing pickle file: {path}")
    with open(path, "rb") as handle:
        try:
            obj = _PlainUnpickler(handle, path).load()
        except UnsafePickleError:
            raise
        except Exception as error:  # truncated or garbled files fail in many ways
            raise UnsafePickleError(f"{path}: unreadable pickle ({type(error).__name__}: {error})") from error
    _check_plain(obj, path)
    return obj
