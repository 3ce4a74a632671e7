"""Tests for utils.training: the per-entry Adam against torch's, the learning-rate rule, solver choice,
and the probes' starting bias (centred log class priors) on a skewed label set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from utils.probing import LinearProbe, LinearProbeRegressor
from utils.training import LBFGS_MAX_CELLS, Bank, _Adam, auto_lr, resolve_solver


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


def skewed_problem(n: int, d: int = 5000, rare: int = 5, rate: float = 0.01, seed: int = 0):
    """NER-like labels: class 0 on 95% of items, ``rare`` classes on ``rate`` each; d correlated features.

    Features are a rank-64 latent signal spread over d columns plus noise (like a transformer's
    activations); rare class c shifts latent coordinate c by 3, so a linear probe can find it.
    """
    rng = np.random.default_rng(seed)
    y = np.zeros(n, dtype=np.int64)
    n_rare = int(round(n * rate))
    y[rng.permutation(n)[: rare * n_rare]] = np.repeat(np.arange(1, rare + 1), n_rare)
    r = 64
    Z = rng.standard_normal((n, r))
    Z[np.arange(n), y] += 3.0 * (y > 0)
    mix = np.random.default_rng(123).standard_normal((r, d)) / np.sqrt(r)
    X = (Z @ mix + 0.5 * rng.standard_normal((n, d))).astype(np.float32)
    return X, y


def test_adam_probe_on_a_skewed_wide_task_beats_the_majority_class_like_sklearn():
    """Regression for the MPNet NER oracle (9,984 features, 95% ``O``): Adam's auto step (3 / 5000 here)
    is too small for a zero bias to reach the log priors (about 4.6 logits apart) in a few epochs;
    the probe then scored below the majority class (train 0.60, dev 0.54 before the prior start)."""
    X, y = skewed_problem(4000)
    Xd, yd = skewed_problem(2000, seed=1)
    majority, majority_dev = np.mean(y == 0), np.mean(yd == 0)
    probe = LinearProbe().fit(X, y, X_dev=Xd, y_dev=yd)
    assert probe.solver_ == "adam" and probe.lr_ == pytest.approx(3 / 5000)
    scaler = StandardScaler().fit(X)
    sk = LogisticRegression(max_iter=1000).fit(scaler.transform(X), y)
    sk_train = sk.score(scaler.transform(X), y)
    train, dev = probe.score(X, y), probe.score(Xd, yd)
    assert train > majority + 0.01 and dev >= majority_dev
    assert train >= sk_train - 0.05  # Adam stops early on dev; sklearn fits the train set (1.0)
    assert dev >= sk.score(scaler.transform(Xd), yd) - 0.01


def centred_log_priors(Y: np.ndarray, C: int, weight: np.ndarray | None = None) -> np.ndarray:
    """Independent reference: log of the (weighted) class frequencies of every column of Y, minus their class mean."""
    out = []
    for t in range(Y.shape[1]):
        freq = np.array([np.sum(Y[:, t] == c) for c in range(C)], dtype=np.float64)
        if weight is not None:
            freq = freq * weight[t]
        freq[freq == 0] = 0.5 * freq[freq > 0].min()
        out.append(np.log(freq) - np.mean(np.log(freq)))
    return np.array(out)


@pytest.mark.parametrize("kind", ["flat", "independent", "incremental"])
def test_bank_bias_starts_at_centred_log_priors_in_every_layout(kind):
    rng = np.random.default_rng(0)
    n, L, h, C = 500, 3, 4, 4
    Y = np.stack([rng.choice(C, n, p=[0.85, 0.1, 0.05, 0.0]), rng.choice(C, n, p=[0.4, 0.3, 0.2, 0.1])], 1)
    weight = np.array([[1.0, 2.0, 3.0, 1.0], [0.5, 1.0, 1.0, 4.0]])
    shape = (L * h,) if kind == "flat" else (L, h)
    for cw in (None, weight):
        bank = Bank(kind, shape, 2, C, np.zeros(shape), np.ones(shape), torch.device("cpu"), torch.float64)
        bank.init_bias_(Y, "classification", cw)
        want = centred_log_priors(Y, C, cw)
        assert np.isfinite(want).all() and np.allclose(want.sum(axis=1), 0)
        for t in range(2):
            for layer in range(bank.L):
                w, b = bank.export(t, layer)
                np.testing.assert_allclose(b, want[t], rtol=1e-12, atol=1e-12)
                assert not w.any()


def test_fitted_probes_start_from_the_prior_intercept():
    """With a vanishing step, a fitted probe keeps its starting intercept: centred log priors (class-weighted
    with ``class_weight``; zero for "balanced"), or the target mean for the regressor."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((600, 8)).astype(np.float32)
    y = rng.choice(np.array(["O", "B-PER", "I-PER"]), 600, p=[0.9, 0.07, 0.03])
    tiny = dict(solver="adam", lr=1e-12, max_epochs=1)
    probe = LinearProbe(**tiny).fit(X, y)
    enc = np.searchsorted(probe.classes_, y)[:, None]
    np.testing.assert_allclose(probe.intercept_, centred_log_priors(enc, 3)[0], atol=1e-5)
    weights = {"O": 0.5, "B-PER": 2.0}
    probe = LinearProbe(class_weight=weights, **tiny).fit(X, y)
    w = np.array([[weights.get(c, 1.0) for c in probe.classes_]])
    np.testing.assert_allclose(probe.intercept_, centred_log_priors(enc, 3, w)[0], atol=1e-5)
    np.testing.assert_allclose(LinearProbe(class_weight="balanced", **tiny).fit(X, y).intercept_, 0, atol=1e-5)
    target = 3.0 + X[:, 0]
    assert LinearProbeRegressor(**tiny).fit(X, target).intercept_ == pytest.approx(target.mean(), abs=1e-4)


@pytest.mark.parametrize("kind,n_targets", [("flat", 1), ("flat", 2), ("independent", 2), ("incremental", 2)])
@pytest.mark.parametrize(
    "l1,l2,l2_squared", [(1e-2, 3e-2, False), (0.0, 3e-2, False), (1e-2, 0.0, False), (0.0, 5e-2, True)]
)
def test_analytic_penalty_gradient_equals_autograd_of_the_exact_penalty(kind, n_targets, l1, l2, l2_squared):
    """Adam adds ``Bank.add_penalty_grad_`` to the data gradient instead of back-propagating ``Bank.penalty``:
    the two must agree, including sign 0 at a zero weight and a zero gradient for a probe whose weights are all 0."""
    rng = np.random.default_rng(0)
    L, h, C = 3, 5, 4
    shape = (L * h,) if kind == "flat" else (L, h)
    bank = Bank(kind, shape, n_targets, C, np.zeros(shape), np.ones(shape), torch.device("cpu"), torch.float64)
    with torch.no_grad():
        for w in bank.weights:
            w.copy_(torch.as_tensor(rng.standard_normal(tuple(w.shape))))
            w.view(-1)[::7] = 0.0  # exact zeros: the subgradient of |w| is 0 there
        if bank.P > 1:  # probe 0 entirely zero: the L2 term contributes nothing to it
            mask = bank.masks(torch.arange(bank.P) == 0)
            for w, m in zip(bank.weights, mask):
                w.masked_fill_(m.expand_as(w), 0.0)
    bank.penalty(l1, l2, l2_squared=l2_squared, smooth=False).backward()
    want = [w.grad.clone() for w in bank.weights]
    seed = [torch.as_tensor(rng.standard_normal(tuple(w.shape))) for w in bank.weights]  # a data gradient already there
    for w, s in zip(bank.weights, seed):
        w.grad = s.clone()
    bank.add_penalty_grad_(l1, l2, l2_squared=l2_squared)
    for w, s, g in zip(bank.weights, seed, want):
        torch.testing.assert_close(w.grad - s, g, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["flat", "incremental"])
def test_chunked_dev_outputs_reuse_one_buffer_and_equal_a_fresh_copy_per_chunk(kind, tmp_path, monkeypatch):
    """``predict_bank`` on a raw memory map (several chunks, the last one short) gives exactly the outputs of
    standardising a fresh copy of every chunk, as it did before the buffer was reused; ``standardized``
    gives exactly ``Bank.standardize`` of all rows."""
    from utils import moments, training

    monkeypatch.setattr(moments, "CHUNK_ELEMENTS", 256 * 24)  # 256 rows a chunk: 3 chunks of 700 rows
    rng = np.random.default_rng(0)
    shape = (700, 24) if kind == "flat" else (700, 3, 8)
    path = tmp_path / "x.npy"
    np.save(path, (rng.normal(size=shape) * 3 + 1).astype(np.float32))
    X = np.load(path, mmap_mode="r")  # read-only: every chunk must be copied
    feat = shape[1:]
    bank = Bank(kind, feat, 1, 4, rng.normal(size=feat), rng.uniform(0.5, 2, size=feat), torch.device("cpu"))
    with torch.no_grad():
        for w in bank.weights:
            w.copy_(torch.as_tensor(rng.normal(size=w.shape), dtype=w.dtype))
    dev = torch.device("cpu")
    got = training.predict_bank(bank, X, dev, "X")
    step = 256
    expected = torch.cat(
        [bank.logits(bank.standardize(torch.from_numpy(np.array(X[s : s + step])))) for s in range(0, 700, step)]
    )
    assert got.shape == (700, bank.P, 4)
    assert torch.equal(got, expected)
    # dev accuracy counted chunk by chunk: exactly the mean over all rows' outputs, as it was computed
    Y = torch.as_tensor(rng.integers(0, 4, size=(700, bank.P)))
    accuracy = (got.argmax(2) == Y).double().mean(0)
    assert torch.equal(training._bank_scores(bank, X, Y, "classification", dev, "X"), accuracy)
    # Adam lends one buffer to all its evaluations: the same scores, read through that memory
    lent = training.chunk_buffer(X)
    assert lent.shape == (256, *feat)
    for _ in range(2):
        assert torch.equal(training._bank_scores(bank, X, Y, "classification", dev, "X", lent), accuracy)
    assert torch.equal(lent[: 700 - 512], bank.standardize(torch.from_numpy(np.array(X[512:]))))  # the last chunk
    Yr = torch.as_tensor(rng.normal(size=(700, bank.P)))
    mse = -((got[..., 0].double() - Yr) ** 2).mean(0)
    assert torch.equal(training._bank_scores(bank, X, Yr, "regression", dev, "X", lent), mse)
    full = bank.standardize(torch.from_numpy(np.array(X)))
    assert torch.equal(training.standardized(bank, X, dev, "X", check=True), full)
    # the chunks really share one buffer (what saves the page faults), and each holds its own rows when yielded
    seen = []
    for s, xb in training.chunk_tensors(X, dev, "X"):
        assert torch.equal(xb, torch.from_numpy(np.array(X[s : s + step])))
        seen.append(xb.data_ptr())
    assert len(seen) == 3 and len(set(seen)) == 1
    bad = np.array(X)
    bad[650, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        training.predict_bank(bank, bad, dev, "activations_dev")
