"""Load a pickle that may only hold plain data (RefCOCO's `refs(unc).p`), never running its code.

A pickle can name any importable callable and call it while loading. This unpickler refuses every
global lookup (so no class, function or reduce call can be reached) and every persistent id, then
checks that what was built is made of dict, list, tuple, str, int, float, bool and None only.
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


def _check_plain(obj: Any, source: Path) -> None:
    pending = [obj]
    while pending:
        item = pending.pop()
        if type(item) in PLAIN_SCALARS:
            continue
        if type(item) not in PLAIN_CONTAINERS:
            raise UnsafePickleError(f"{source}: holds a {type(item).__name__}; only plain containers are allowed")
        pending.extend([*item.keys(), *item.values()] if isinstance(item, dict) else item)


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
