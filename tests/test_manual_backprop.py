"""The written-out training step against autograd (the oracle) on the same dropout masks."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dtpm_fast.parametric import manual_backprop
from dtpm_fast.parametric.network import build_mlp
from dtpm_fast.parametric.training import categorical_loss, inverse_gamma_loss, train_network


def _same_masks_forward(net, x, dtype, seed):
    """``net(x)`` in training mode with the dropout masks the manual step draws from ``seed``.

    Written from the rule in manual_backprop's docstring: a p = 1/2 mask keeps an entry when the
    matching signed word (int16 for bfloat16, int32 for float32) of int64 draws over the full
    range is negative; the kept entries are scaled by 2.
    """
    torch.manual_seed(seed)
    int_dtype = {torch.bfloat16: torch.int16, torch.float32: torch.int32}[dtype]
    width = torch.iinfo(int_dtype).bits // 8
    a = x
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    for i, layer in enumerate(linears):
        z = torch.nn.functional.linear(a, layer.weight, layer.bias)
        if i == len(linears) - 1:
            return z
        a = torch.relu(z)
        if i > 0:  # build_mlp: dropout after every hidden layer but the first
            words = torch.empty(-(-a.numel() * width // 8), dtype=torch.int64).random_(-(2**63), None)
            keep = words.view(int_dtype)[: a.numel()].view(a.shape) < 0
            a = a * keep * 2.0
    raise AssertionError("unreachable")


def _grads(net):
    return [p.grad.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("kind", ["categorical", "inverse_gamma"])
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_float32_gradients_equal_autograd_on_the_same_masks(kind, dropout):
    torch.manual_seed(3)
    n_out = 7 if kind == "categorical" else 1
    net = build_mlp(5, (16, 32, 16), n_out, dropout)
    x = torch.randn(37, 5)
    t = torch.randint(0, 100, (37,))
    sigma2 = torch.rand(37) + 0.01

    def loss_of(out):
        if kind == "categorical":
            return categorical_loss(out, t, 100, n_out, "cross_entropy")
        return inverse_gamma_loss(out, sigma2, 1.5, "sigma2")

    net.train()
    step = manual_backprop.ManualBackpropStep(net, torch.float32)
    torch.manual_seed(11)
    loss = step(x, loss_of)
    manual = _grads(net)

    net.zero_grad()
    out = _same_masks_forward(net, x, torch.float32, 11) if dropout > 0 else net(x)
    expected_loss = loss_of(out)
    expected_loss.backward()
    assert float(loss) == pytest.approx(float(expected_loss.detach()), rel=1e-6)
    for got, want in zip(manual, _grads(net), strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def test_bfloat16_gradients_match_autograd_under_autocast_to_bfloat16_precision():
    torch.manual_seed(4)
    net = build_mlp(6, (64, 128, 64), 1, 0.0)
    x = torch.randn(64, 6)
    sigma2 = torch.rand(64) + 0.01

    def loss_of(out):
        return inverse_gamma_loss(out, sigma2, 2.0, "sigma2")

    net.train()
    step = manual_backprop.ManualBackpropStep(net, torch.bfloat16)
    step(x, loss_of)
    manual = _grads(net)
    net.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    loss_of(out.float()).backward()
    for got, want in zip(manual, _grads(net), strict=True):
        scale = float(want.abs().max())
        np.testing.assert_allclose(got.numpy() / scale, want.numpy() / scale, atol=2e-2)


def test_dropout_half_keeps_half_the_entries_and_other_rates_their_share():
    torch.manual_seed(0)
    net = build_mlp(4, (8, 8), 1, 0.5)
    step = manual_backprop.ManualBackpropStep(net, torch.bfloat16)
    a = torch.ones(400, 500, dtype=torch.bfloat16)
    kept = float((step._drop(a, 0.5) > 0).float().mean())
    assert abs(kept - 0.5) < 0.005  # 200,000 draws: 5 standard deviations is 0.0056
    kept = float((step._drop(a, 0.2) > 0).float().mean())
    assert abs(kept - 0.8) < 0.005


def test_supports_only_the_built_mlp_on_the_cpu():
    net = build_mlp(4, (8, 8), 1, 0.5)
    assert manual_backprop.supports(net, torch.device("cpu"))
    assert not manual_backprop.supports(net, torch.device("meta"))
    assert not manual_backprop.supports(
        torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Tanh()), torch.device("cpu")
    )


def test_manual_training_is_a_function_of_the_seed_and_learns():
    X = torch.randn(300, 6)

    def fit(seed):
        torch.manual_seed(seed)
        net = build_mlp(6, (32, 64, 32), 1, 0.5)
        history = train_network(
            net,
            X,
            kind="inverse_gamma",
            T=100,
            num_bins=None,
            epochs=30,
            batch_size=64,
            lr=3e-3,
            weight_decay=5e-4,
            schedule="warmup_cosine",
            precision="bfloat16",
            pipeline="per_epoch",
            t_sampling="stratified",
            ig_weighting="sigma2",
            backprop="manual",
        )
        return history, [p.detach().clone() for p in net.parameters()]

    h1, p1 = fit(5)
    h2, p2 = fit(5)
    h3, _ = fit(6)
    assert np.array_equal(h1, h2) and all(torch.equal(a, b) for a, b in zip(p1, p2, strict=True))
    assert not np.array_equal(h1, h3)
    assert h1[-5:].mean() < h1[:5].mean()
