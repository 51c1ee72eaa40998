"""Adam's direct fused update against torch.optim.Adam (the oracle)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from dtpm_fast.parametric.network import build_mlp
from dtpm_fast.parametric.optimizer import DirectFusedAdam


def test_direct_fused_adam_updates_as_torch_adam_does():
    torch.manual_seed(2)
    nets = [build_mlp(5, (16, 32), 3, 0.0) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    optimizers = [torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=5e-4, fused=True) for net in nets]
    direct = DirectFusedAdam.of(optimizers[1])
    assert direct is not None
    for step in range(6):
        grads = [torch.randn_like(p) for p in nets[0].parameters()]
        for net, optimizer in zip(nets, optimizers, strict=True):
            optimizer.param_groups[0]["lr"] = 1e-3 * (step + 1)  # a schedule writes it here
            for p, g in zip(net.parameters(), grads, strict=True):
                p.grad = g.clone()
        optimizers[0].step()
        direct.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.equal(a, b)


def test_direct_fused_adam_is_only_taken_for_a_fused_plain_adam():
    params = list(build_mlp(4, (8,), 1, 0.0).parameters())
    assert DirectFusedAdam.of(torch.optim.SGD(params, lr=0.1)) is None
    assert DirectFusedAdam.of(torch.optim.Adam(params, lr=0.1)) is None  # not fused
    assert DirectFusedAdam.of(torch.optim.Adam(params, lr=0.1, fused=True, amsgrad=True)) is None


def test_paper_recipe_training_equals_the_authors_loop_with_optimizer_step():
    """train_network with the paper recipe's settings against the loop written with Adam.step()."""
    from dtpm_fast.parametric.network import inverse_gamma_shape
    from dtpm_fast.parametric.training import inverse_gamma_loss, train_network
    from dtpm_fast.schedule import ve_sigma2

    T, epochs, batch_size = 50, 3, 16
    torch.manual_seed(0)
    X = torch.randn(70, 4)
    nets = [build_mlp(4, (16, 16), 1, 0.5) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())

    torch.manual_seed(7)
    history = train_network(
        nets[0], X, kind="inverse_gamma", T=T, num_bins=None, epochs=epochs,
        batch_size=batch_size, lr=1e-3, weight_decay=5e-4,
    )  # fmt: skip

    torch.manual_seed(7)
    net = nets[1]
    sigma2 = torch.as_tensor(ve_sigma2(T), dtype=torch.float32)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=5e-4, fused=True)
    net.train()
    losses = []
    for _ in range(epochs):
        total = 0.0
        for idx in torch.randperm(len(X)).split(batch_size):
            x0 = X[idx]
            t = torch.randint(0, T, (len(idx),))
            x_t = x0 + sigma2[t].sqrt().unsqueeze(1) * torch.randn_like(x0)
            loss = inverse_gamma_loss(net(x_t), sigma2[t], inverse_gamma_shape(4))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(X))
    net.eval()

    assert all(torch.equal(a, b) for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True))
    assert history == pytest.approx(losses, rel=1e-6)
