"""forward_until returns what the named module computed and skips the rest of the forward."""

from __future__ import annotations

import pytest
import torch

from imagekv.models.partial_forward import forward_until


class Chain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)

    def forward(self, x):
        return self.second(self.first(x))


def test_the_output_is_the_modules_and_the_modules_after_it_never_run():
    chain, x = Chain(), torch.randn(2, 3)
    ran = []
    chain.second.register_forward_hook(lambda *_: ran.append("second"))
    assert torch.equal(forward_until(chain, chain.first, {"x": x}), chain.first(x))
    assert ran == []
    chain(x)  # the stop is removed
    assert ran == ["second"]


def test_a_module_the_forward_never_runs_is_an_error():
    with pytest.raises(RuntimeError, match="never ran Linear"):
        forward_until(Chain(), torch.nn.Linear(3, 3), {"x": torch.randn(2, 3)})
