"""Tests for utils.training: the per-entry Adam against torch's, the learning-rate rule, solver choice."""

from __future__ import annotations

import pytest
import torch

from utils.training import LBFGS_MAX_CELLS, _Adam, auto_lr, resolve_solver


def test_per_entry_adam_equals_torch_adam_with_one_rate():
    torch.manual_seed(0)
    target = torch.randn(5, 3)
    ours, ref = torch.zeros(5, 3, requires_grad=True), torch.zeros(5, 3, requires_grad=True)
    opt_ours = _Adam([ours], [torch.full((1, 3), 0.01)])
    opt_ref = torch.optim.Adam([ref], lr=0.01)
    for _ in range(20):
        for p, opt in ((ours, opt_ours), (ref, opt_ref)):
            opt.zero_grad()
            ((p - target) ** 2).sum().backward()
            opt.step()
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7)


def test_adam_zero_grad_honours_set_to_none():
    p = torch.ones(2, requires_grad=True)
    opt = _Adam([p], [torch.tensor(0.1)])
    (p * 3).sum().backward()
    opt.zero_grad(set_to_none=False)
    assert p.grad is not None and torch.equal(p.grad, torch.zeros(2))
    opt.zero_grad()
    assert p.grad is None


def test_auto_lr_and_solver_choice():
    torch.testing.assert_close(
        auto_lr(torch.tensor([100, 768, 9984])), torch.tensor([1e-2, 3 / 768, 3 / 9984], dtype=torch.float64)
    )
    assert resolve_solver("auto", LBFGS_MAX_CELLS, has_dev=False) == "lbfgs"
    assert resolve_solver("auto", LBFGS_MAX_CELLS + 1, has_dev=False) == "adam"
    assert resolve_solver("auto", 10, has_dev=True) == "adam"
    with pytest.raises(ValueError, match="solver must be"):
        resolve_solver("sgd", 10, has_dev=False)
