"""Run a model only as far as the features read from it: the rest of its forward cannot change them."""

from __future__ import annotations

import torch


class _Reached(Exception):
    """Ends a forward once the module whose output is wanted has run."""


def forward_until(model: torch.nn.Module, module: torch.nn.Module, inputs: dict):
    """`model(**inputs)` up to the end of `module`'s forward; returns what `module` returned.

    Whatever the model would compute after `module` (the layers above, final norms, an LM or pooling
    head) is skipped. Side effects of the modules that did run (a KV cache filled in place) remain.
    """
    reached = []

    def stop(_module, _args, output):
        reached.append(output)
        raise _Reached

    handle = module.register_forward_hook(stop)
    try:
        model(**inputs)
    except _Reached:
        return reached[0]
    finally:
        handle.remove()
    raise RuntimeError(f"the forward of {type(model).__name__} never ran {type(module).__name__}")
