"""The fast paths compute what the reference paths compute: `torch.compile(fullgraph=True)` traces
every model family in one graph (no graph breaks) with unchanged outputs and gradients, and the
multi-tensor optimizers and clipping of `vitkit.training.optim` give the weights of PyTorch's
one-tensor-at-a-time reference implementations."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from vitkit.models.vit import create_model
from vitkit.training.config import TrainConfig
from vitkit.training.optim import build_optimizer, clip_gradients, param_groups

MODELS = {
    "token": dict(name="ViT-Test/8", img_size=16),
    "gap": dict(name="ViT-Test/8", img_size=16, classifier="gap", class_token=False),
    "hybrid": dict(name="R+ViT-Ti/16", img_size=32, depth=1),
    "dynamic size": dict(name="ViT-Test/8", img_size=16, dynamic_img_size=True),
}


def _model(case: str) -> torch.nn.Module:
    fields = dict(MODELS[case])
    torch.manual_seed(0)
    model = create_model(fields.pop("name"), num_classes=5, **fields)
    for param in model.parameters():  # the zero head would hide differences in the logits
        torch.nn.init.normal_(param, std=0.05)
    return model


@pytest.mark.parametrize("case", list(MODELS))
def test_compile_traces_one_graph_with_the_same_outputs_and_gradients(case: str) -> None:
    torch._dynamo.reset()
    model = _model(case).train()
    reference = copy.deepcopy(model)
    size = model.config.img_size[0] + (8 if case == "dynamic size" else 0)
    images = torch.randn(3, 3, size, size)
    # aot_eager: dynamo's graph capture and AOTAutograd's forward/backward graphs, without the
    # (slow on a CPU) code generation; fullgraph=True turns any graph break into an error.
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    logits = compiled(images)
    expected = reference(images)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)
    logits.square().sum().backward()
    expected.square().sum().backward()
    for (name, param), other in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(param.grad, other.grad, rtol=1e-4, atol=1e-6, msg=name)


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, clip) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):
        images = torch.randn(4, 3, 16, 16, generator=generator)
        labels = torch.randint(0, 5, (4,), generator=generator)
        F.cross_entropy(model(images), labels).backward()
        clip(model.parameters(), 0.5)  # small enough to clip: the scaling path runs
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_multi_tensor_optimizer_matches_the_reference_loop(kind: str) -> None:
    config = TrainConfig(optimizer=kind, lr=1e-2, weight_decay=0.1, steps=1)
    fast, slow = _model("token"), _model("token")
    optimizer = build_optimizer(fast, config)
    assert all(group["foreach"] for group in optimizer.param_groups)
    groups = param_groups(slow, config.weight_decay)
    if kind == "sgd":
        reference = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, foreach=False)
    else:
        reference = torch.optim.AdamW(
            groups, lr=config.lr, betas=(config.beta1, config.beta2), foreach=False
        )
    _train(fast, optimizer, clip_gradients)
    _train(slow, reference, lambda params, norm: torch.nn.utils.clip_grad_norm_(
        params, norm, foreach=False))  # fmt: skip
    initial = _model("token").state_dict()
    moved = 0.0
    for (name, param), other in zip(fast.named_parameters(), slow.parameters()):
        torch.testing.assert_close(param, other, rtol=1e-5, atol=1e-6, msg=name)
        moved = max(moved, (param - initial[name]).abs().max().item())
    assert moved > 1e-3  # the weights did change: the comparison is not of two initialisations


def test_clip_gradients_returns_the_norm_and_scales_to_it() -> None:
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    params[0].grad = torch.tensor([3.0, 0.0, 0.0])
    params[1].grad = torch.tensor([[0.0, 4.0], [0.0, 0.0]])
    norm = clip_gradients(params, 1.0)
    assert norm.item() == pytest.approx(5.0)
    torch.testing.assert_close(params[0].grad, torch.tensor([0.6, 0.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(params[1].grad[0, 1], torch.tensor(0.8), atol=1e-6, rtol=0)
