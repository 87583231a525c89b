"""vitkit's Muon against PyTorch's (the same update to the bit when both orthogonalise in bf16)
and its fp32 Newton-Schulz iteration against a float64 numpy computation of the same quintic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitkit.training.muon import COEFFICIENTS, NS_STEPS, Muon, orthogonalize


def _matrices(seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for shape in ((48, 16), (16, 48), (32, 32))]


def test_bf16_steps_equal_pytorchs_muon_to_the_bit() -> None:
    ours, theirs = _matrices(0), _matrices(0)
    for params in (ours, theirs):
        for param in params:
            param.requires_grad_(True)
    optimizers = [
        Muon(ours, lr=0.02, weight_decay=0.1, ns_dtype=torch.bfloat16),
        torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw"),
    ]
    for step in range(4):
        gradients = _matrices(100 + step)
        for params, optimizer in zip((ours, theirs), optimizers):
            for param, gradient in zip(params, gradients):
                param.grad = gradient.clone()
            optimizer.step()
    for got, expected in zip(ours, theirs):
        assert torch.equal(got, expected)


def _numpy_newton_schulz(matrix: np.ndarray) -> np.ndarray:
    a, b, c = COEFFICIENTS
    tall = matrix.shape[0] > matrix.shape[1]
    x = matrix.T if tall else matrix
    x = x / np.linalg.norm(x)
    for _ in range(NS_STEPS):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (32, 32)])
def test_fp32_orthogonalisation_is_the_quintic_iteration(shape: tuple[int, int]) -> None:
    matrix = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    got = orthogonalize(matrix, dtype=torch.float32)
    expected = _numpy_newton_schulz(matrix.double().numpy())
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)
    singular = np.linalg.svd(expected, compute_uv=False)
    assert 0.3 < singular.min() and singular.max() < 1.6  # roughly orthogonal, as intended


def test_muon_refuses_what_is_not_a_matrix() -> None:
    with pytest.raises(ValueError, match="2-D weights only"):
        Muon([torch.zeros(3, requires_grad=True)], lr=0.1, weight_decay=0.0)
