"""PERK's inner loop, weighting head and segments: truncated unrolling checked against hand-derived
gradients, the head's starting weight, gradients reaching the learned step sizes."""

from __future__ import annotations

import math

import pytest
import torch

from ttx.perk.inner import inner_loop
from ttx.perk.weighting import TokenWeighting, weighted_token_loss


def _quartic(params, part, differentiate, w):
    # L_inner(theta; w) = w * theta^4 / 4: gradient w theta^3, Hessian 3 w theta^2
    return (w * params["theta"] ** 4 / 4).sum()


def _two_steps(unroll):
    theta0 = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    w = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    lrs = torch.tensor([[0.2], [0.15]], dtype=torch.float64, requires_grad=True)
    out, _ = inner_loop(lambda p, part, d: _quartic(p, part, d, w), {"theta": theta0}, lrs,
                        unroll=unroll)
    out["theta"].backward()                    # outer loss = theta_2, so d/dx = d theta_2 / dx
    return theta0, w, lrs


@pytest.mark.parametrize("unroll", [0, 1, 2])
def test_truncated_unroll_differentiates_through_exactly_the_last_t_steps(unroll):
    theta0, w, lrs = _two_steps(unroll)
    t0, wv = theta0.item(), w.item()
    a0, a1 = lrs[0, 0].item(), lrs[1, 0].item()
    g0 = wv * t0 ** 3
    t1 = t0 - a0 * g0
    g1 = wv * t1 ** 3

    def jac(theta, alpha):           # d theta_{k+1} / d theta_k of a differentiated step
        return 1 - alpha * 3 * wv * theta ** 2

    # hand-written: a first-order step has Jacobian 1 and no dependence on w
    j0 = jac(t0, a0) if unroll == 2 else 1.0
    j1 = jac(t1, a1) if unroll >= 1 else 1.0
    d_theta0 = j1 * j0
    d_a0 = -g0 * j1
    d_a1 = -g1
    d_w1 = -a1 * t1 ** 3 if unroll >= 1 else 0.0            # theta_2's own dependence on w
    d_w = d_w1 + (j1 * (-a0 * t0 ** 3) if unroll == 2 else 0.0)
    assert theta0.grad.item() == pytest.approx(d_theta0, rel=1e-12)
    assert lrs.grad[0, 0].item() == pytest.approx(d_a0, rel=1e-12)
    assert lrs.grad[1, 0].item() == pytest.approx(d_a1, rel=1e-12)
    if unroll == 0:
        assert w.grad is None or w.grad.item() == 0.0
    else:
        assert w.grad.item() == pytest.approx(d_w, rel=1e-12)


def test_unrolling_more_steps_changes_the_gradient():
    """The three truncations give three different init gradients (so none is silently the same)."""
    grads = {u: _two_steps(u)[0].grad.item() for u in (0, 1, 2)}
    assert len({round(g, 12) for g in grads.values()}) == 3


def test_per_tensor_rates_and_gradient_accumulation():
    """Two tensors with their own rates; the loss split in two parts gives the same result."""
    a = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    lrs = torch.tensor([[0.1, 0.3]], dtype=torch.float64, requires_grad=True)

    def whole(p, part, d):
        return (p["a"] ** 2).sum() + (p["b"] ** 2).sum()

    def halves(p, part, d):
        return (p["a"] ** 2).sum() if part == 0 else (p["b"] ** 2).sum()

    one, hist1 = inner_loop(whole, {"a": a, "b": b}, lrs, unroll=1)
    two, hist2 = inner_loop(halves, {"a": a, "b": b}, lrs, unroll=1, parts=2)
    assert torch.allclose(one["a"], a * (1 - 2 * 0.1)) and torch.allclose(one["b"], b * (1 - 2 * 0.3))
    assert torch.allclose(two["a"], one["a"]) and torch.allclose(two["b"], one["b"])
    assert hist1 == pytest.approx([5.25]) and hist2 == pytest.approx([5.25])
    with pytest.raises(ValueError):
        inner_loop(whole, {"a": a, "b": b}, lrs, unroll=2)


def test_zero_initialised_head_weighs_every_token_ln2_over_3():
    head = TokenWeighting(hidden_size=16)
    h = torch.randn(3, 7, 16) * 10
    w = head(h)
    assert w.shape == (3, 7)
    assert torch.allclose(w, torch.full_like(w, math.log(2) / 3))


def test_weighted_loss_is_the_weighted_mean_over_labelled_tokens():
    logits = torch.randn(2, 4, 11)
    labels = torch.tensor([[3, 5, -100, -100], [1, 2, 7, -100]])
    weights = torch.rand(2, 4)
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.clamp(min=0).flatten(),
                                           reduction="none").view(2, 4)
    mask = labels != -100
    expected = (ce * weights)[mask].sum() / mask.sum()
    assert torch.allclose(weighted_token_loss(logits, labels, weights), expected)
    assert torch.allclose(weighted_token_loss(logits, labels, None), ce[mask].mean())
