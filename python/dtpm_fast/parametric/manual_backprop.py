"""A training step of the DTPM MLP with its backward pass written out (the fast recipe on the CPU).

Autograd and autocast cost more than the matrix products on the small networks and batches the
parametric models train with: a bfloat16 step of 512 rows spent ~3/4 of its time outside the
products (dropout masks from uniform draws, boolean comparisons, casts; profile in
studies/parametric_step_budget/). This step does the same arithmetic as
``net(x)`` under ``torch.autocast(bfloat16)`` followed by ``loss.backward()``, with three changes
of form, not of distribution:

- a dropout mask with p = 1/2 is the sign bit of random 16-bit words (the bits of one
  ``random_`` call on int64 words), applied by a bitwise AND on the activation's bits; other p
  compare uniform draws with p as :class:`~dtpm_fast.parametric.network.UniformMaskDropout` does;
- the inverted-dropout factor 1 / (1 - p) is folded into the next matrix product (``alpha``);
- the ReLU and dropout derivatives are one ``threshold_backward`` on the kept activation (an
  activation is positive exactly when its pre-activation was positive and it was kept).

The step writes the parameters' gradients; the training loop applies the update
(:func:`~dtpm_fast.parametric.optimizer.adam_update`), as it does after ``loss.backward()``.

The gradient of the loss with respect to the network's output comes from autograd on the output
alone, so the loss functions are written once (``training.categorical_loss``,
``training.inverse_gamma_loss``). ``tests/test_manual_backprop.py`` checks the gradients against
autograd on the same masks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dtpm_fast.parametric.network import UniformMaskDropout

#: Integer type of the same width as each floating type (the bitwise dropout mask).
_SAME_WIDTH_INT = {torch.bfloat16: torch.int16, torch.float32: torch.int32}


def supports(net: nn.Module, device: torch.device) -> bool:
    """Whether ``net`` is an MLP of ``build_mlp``'s form on the CPU (what this step handles)."""
    if device.type != "cpu" or not isinstance(net, nn.Sequential):
        return False
    allowed = (nn.Linear, nn.ReLU, UniformMaskDropout)
    return (
        all(isinstance(layer, allowed) for layer in net)
        and isinstance(net[-1], nn.Linear)
        and all(layer.bias is not None for layer in net if isinstance(layer, nn.Linear))
    )


class ManualBackpropStep:
    """Forward and backward pass of a ``build_mlp`` network, products in ``dtype``.

    Parameters
    ----------
    net : nn.Sequential
        Linear, ReLU and UniformMaskDropout layers as :func:`network.build_mlp` builds them
        (check with :func:`supports`). Its parameters stay float32; a call writes their ``.grad``.
    dtype : torch.bfloat16 or torch.float32
        Type of the matrix products and activations (float32: for checking against autograd).
    """

    def __init__(self, net: nn.Sequential, dtype: torch.dtype) -> None:
        self.linears: list[nn.Linear] = [layer for layer in net if isinstance(layer, nn.Linear)]
        # dropout_p[i]: the dropout after hidden layer i (0.0 when none), from the layer order.
        self.dropout_p: list[float] = []
        for layer in net:
            if isinstance(layer, nn.Linear):
                self.dropout_p.append(0.0)
            elif isinstance(layer, UniformMaskDropout):
                self.dropout_p[-1] = layer.p
        self.dtype = dtype
        # The weights in ``dtype``, refreshed into the same buffers each step.
        self.low_weights = [torch.empty_like(layer.weight, dtype=dtype) for layer in self.linears]
        self.int_dtype = _SAME_WIDTH_INT[dtype]
        self.sign_shift = torch.iinfo(self.int_dtype).bits - 1

    def _drop(self, a: torch.Tensor, p: float) -> torch.Tensor:
        """``a`` with each entry zeroed with probability p (not yet scaled by 1 / (1 - p))."""
        if p == 0.5:
            width = torch.iinfo(self.int_dtype).bits // 8
            words = -(-a.numel() * width // 8)
            bits = torch.empty(words, dtype=torch.int64).random_(-(2**63), None)
            signs = bits.view(self.int_dtype)[: a.numel()].view(a.shape) >> self.sign_shift
            return (a.view(self.int_dtype) & signs).view(a.dtype)
        return a * (torch.rand(a.shape) >= p)

    def __call__(
        self, x: torch.Tensor, loss_of_output: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Gradients of the loss on the float32 batch ``x`` into ``.grad``; returns the detached loss.

        ``loss_of_output`` maps the network's float32 output (m, n_outputs) to the scalar loss.
        """
        dtype = self.dtype
        if dtype == torch.float32:
            weights = [layer.weight for layer in self.linears]
        else:
            weights = [
                low.copy_(layer.weight) for low, layer in zip(self.low_weights, self.linears, strict=True)
            ]
        inputs: list[torch.Tensor] = []  # each layer's input activation (dropped, unscaled)
        scales: list[float] = []  # the factor that input carries: 1 / (1 - p) of its dropout
        a, scale = x.to(dtype), 1.0
        last = len(self.linears) - 1
        for i, (layer, w) in enumerate(zip(self.linears, weights, strict=True)):
            inputs.append(a)
            scales.append(scale)
            z = torch.addmm(layer.bias.to(dtype), a, w.t(), alpha=scale)
            if i == last:
                output = z.float()
                break
            a = z.relu_()
            p = self.dropout_p[i]
            if p > 0.0:
                a, scale = self._drop(a, p), 1.0 / (1.0 - p)
            else:
                scale = 1.0

        output.requires_grad_(True)
        loss = loss_of_output(output)
        (grad_output,) = torch.autograd.grad(loss, output)

        d = grad_output.to(dtype)
        for i in range(last, -1, -1):
            layer, a, scale = self.linears[i], inputs[i], scales[i]
            layer.bias.grad = d.sum(0).float()
            if scale != 1.0:
                d = d * scale
            layer.weight.grad = torch.mm(d.t(), a).float()
            if i > 0:
                d = torch.ops.aten.threshold_backward(torch.mm(d, weights[i]), a, 0)
        return loss.detach()
