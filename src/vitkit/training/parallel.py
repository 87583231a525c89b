"""Parallelism applied in place to a finished model: activation checkpointing, DDP, FSDP2, compile.

The model class holds no parallel code, and `parallelize` changes no parameter name: the model
that the optimizer steps is the module the loop calls, as PyTorch's composable APIs allow:
- DDP (the default; composable `replicate`): every process holds the whole model, and the
  gradients are averaged across processes during the backward pass.
- FSDP2 (`fully_shard` on each block, then on the root): parameters, gradients and optimizer
  state are split across processes, 1/N each; a block's parameters are gathered only for its
  forward and backward. For models whose training state does not fit one GPU (ViT-H).
- Activation checkpointing (composable `checkpoint`): each block's activations are recomputed in
  the backward pass instead of kept.
- `torch.compile` through `Module.compile`, which compiles the forward in place (its cache and
  time limit: compiling.py).
Either way the averaged gradient is that of the global batch, as in one process.

Checkpoints always hold the full, unsharded state a single process saves (`model.state_dict()`,
`optimizer.state_dict()`); under FSDP they are gathered to rank 0 with
torch.distributed.checkpoint's state-dict helpers and sharded again on loading, so a run resumes
on any number of processes, sharded or not.

FSDP and those helpers are imported only by a process that shards (about 0.6 s, most of it
DTensor's): the others, every single-process run and `vitkit eval` among them, start without.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any, TypeVar

import torch
from torch import nn
from torch.distributed._composable import checkpoint, replicate
from torch.distributed._composable.replicate import DDP

from vitkit.training.compiling import keep_compile_cache
from vitkit.training.config import TrainConfig
from vitkit.training.distributed import World
from vitkit.training.tasks import TrainedModel

# `unsharded` gives back the kind of model it is given: a trained one, or an evaluated encoder.
Model = TypeVar("Model", bound=TrainedModel)

# How a sharded model's checkpoint is written: gathered on rank 0 only, in CPU memory; and read:
# every rank passes the full state it read and keeps its own shard (StateDictOptions' arguments).
_TO_SAVE = {"full_state_dict": True, "cpu_offload": True}
_TO_LOAD = {"full_state_dict": True}


def parallelize(
    model: TrainedModel, *, config: TrainConfig, world: World, precision: str = "fp32"
) -> None:
    """Apply the config's activation checkpointing, DDP or FSDP2 (with several processes; bf16
    compute under FSDP when `precision` is bf16) and compile to `model`, in place."""
    if config.activation_checkpointing:
        for block in model.blocks:
            checkpoint(block)
    if world.distributed and config.parallel == "fsdp":
        shard(model, precision=precision)
    elif world.distributed:
        replicate(model, device_id=world.device)
    if config.compile:
        keep_compile_cache()
        model.compile()


def shard(model: nn.Module, *, precision: str) -> None:
    """FSDP2 on each encoder block, then on the rest (embeddings, final norm, head). With bf16 the
    gathered parameters are cast to bf16 for compute while gradients are averaged in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy()
    if precision == "bf16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


def _fsdp_module_class() -> type | None:
    """FSDP2's module class, or None while FSDP is not imported, when nothing can be sharded."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp.FSDPModule if fsdp is not None else None


def _state_dict_helpers() -> ModuleType:
    """torch.distributed.checkpoint's state-dict helpers, imported once a model is sharded."""
    from torch.distributed.checkpoint import state_dict

    return state_dict


def is_sharded(module: nn.Module) -> bool:
    sharded = _fsdp_module_class()
    return sharded is not None and any(isinstance(part, sharded) for part in module.modules())


def set_gradient_sync(model: nn.Module, *, enabled: bool) -> None:
    """Whether the next backward pass averages gradients across processes: off for all but the
    last micro-batch of an accumulated step, whose backward then averages the sum."""
    if isinstance(model, DDP) or is_sharded(model):
        model.set_requires_gradient_sync(enabled)


def model_state(module: nn.Module) -> dict[str, Any]:
    """`module.state_dict()` as one process holds it: gathered to rank 0 when sharded (the other
    ranks get an empty dict)."""
    if is_sharded(module):
        helpers = _state_dict_helpers()
        return helpers.get_model_state_dict(module, options=helpers.StateDictOptions(**_TO_SAVE))
    return module.state_dict()


def load_model_state(module: nn.Module, state: dict[str, Any]) -> None:
    """Load a full state dict (every rank passes it) into `module`, sharded or not."""
    if is_sharded(module):
        helpers = _state_dict_helpers()
        helpers.set_model_state_dict(module, state, options=helpers.StateDictOptions(**_TO_LOAD))
    else:
        module.load_state_dict(state)


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """`optimizer.state_dict()` as one process holds it (parameters numbered in the order of the
    optimizer's groups): gathered to rank 0 when sharded, an empty dict on the other ranks."""
    if not is_sharded(model):
        return optimizer.state_dict()
    helpers = _state_dict_helpers()
    options = helpers.StateDictOptions(**_TO_SAVE)
    state = helpers.get_optimizer_state_dict(model, optimizer, options=options)
    if not state:
        return {}
    names = [name for group in state["param_groups"] for name in group["params"]]
    number = {name: index for index, name in enumerate(names)}
    return {
        "state": {number[name]: value for name, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [number[name] for name in group["params"]]}
            for group in state["param_groups"]
        ],
    }


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load what `optimizer_state` returned (every rank passes it), sharded or not."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    name_of = {id(param): name for name, param in model.named_parameters()}
    names = [name_of[id(param)] for group in optimizer.param_groups for param in group["params"]]
    by_name = {
        "state": {names[index]: value for index, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[index] for index in group["params"]]}
            for group in state["param_groups"]
        ],
    }
    helpers = _state_dict_helpers()
    options = helpers.StateDictOptions(**_TO_LOAD)
    helpers.set_optimizer_state_dict(model, optimizer, by_name, options=options)
    # The saved hyperparameters as they were, as optimizer.load_state_dict restores them (DCP's
    # loader turns tuples such as Adam's betas into lists).
    for group, saved in zip(optimizer.param_groups, state["param_groups"]):
        group.update((key, value) for key, value in saved.items() if key != "params")


def unsharded(model: Model) -> Model:
    """`model` itself, or under FSDP a plain copy with the full weights on every rank: what
    evaluation and the final weights need, where each rank runs its own share of the images
    without waiting for the others."""
    if not is_sharded(model):
        return model
    helpers = _state_dict_helpers()
    state = helpers.get_model_state_dict(model, options=helpers.StateDictOptions(**_TO_LOAD))
    with torch.device("meta"):
        copy = type(model)(model.config, preprocessing=model.preprocessing)
    device = next(iter(state.values())).device
    copy.to_empty(device=device)
    copy.load_state_dict(state)
    return copy
