"""`export_onnx`: a vitkit model as an ONNX graph (images (N, 3, H, W) -> logits), for inference
outside PyTorch (onnxruntime, TensorRT, ...).

It uses PyTorch's own exporter (`torch.onnx.export(dynamo=True)`, the default since PyTorch 2.9,
which needs the `onnx` and `onnxscript` packages: `pip install onnx onnxscript`). The graph is
traced at one resolution (position embeddings fixed for its patch grid); the batch dimension is
dynamic unless fixed. The graph's metadata (`metadata_props`, onnxruntime's
`get_modelmeta().custom_metadata_map`) says how images become its inputs and, where the weights
record them, what its outputs are called, so that a consumer needs nothing but the .onnx file.
Like every vitkit export it is written all or nothing (`vitkit.io.staged_writes`): into a hidden
folder beside the target, then moved into place, the external weights file (models over ~2 GB)
first.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vitkit.errors import CheckpointError
from vitkit.io import staged_writes
from vitkit.models.vit import VisionTransformer
from vitkit.weights.class_names import model_class_names

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
# A protobuf message holds at most 2 GiB; larger models keep their weights in OUT.onnx.data.
_EXTERNAL_DATA_BYTES = 1_500_000_000
# The exporter's example input holds this many images at most (a fixed batch is traced with one).
MOST_BATCH = 4096
# The opsets PyTorch's dynamo exporter writes start at 18.
FIRST_OPSET = 18


def export_onnx(
    model: VisionTransformer,
    path: str | Path,
    *,
    batch_size: int | None = None,
    opset_version: int | None = None,
) -> Path:
    """Write `model` (exported in eval mode, on the CPU, in float32) to the ONNX file `path`, for
    inputs at the model's `config.img_size`. batch_size=None (the default) leaves the batch
    dimension dynamic (named "batch"), as inference servers batch freely; an int fixes it.
    The metadata is `onnx_metadata(model)`."""
    path = Path(path)
    metadata = onnx_metadata(model)
    if path.suffix != ".onnx":
        raise CheckpointError(f"{path}: an ONNX export needs a .onnx name")
    for package in ("onnx", "onnxscript"):
        try:
            __import__(package)
        except ImportError:
            raise CheckpointError(
                f"exporting to ONNX needs the {package!r} package: pip install onnx onnxscript"
            ) from None
    _check_opset(opset_version)
    if batch_size is not None and not 1 <= batch_size <= MOST_BATCH:
        raise CheckpointError(f"batch size {batch_size}: expected 1 to {MOST_BATCH}, or dynamic")
    model = model.eval().to("cpu", torch.float32)
    height, width = model.config.img_size
    example = torch.zeros(batch_size or 2, model.config.in_chans, height, width)
    dynamic_shapes = None
    if batch_size is None:
        dynamic_shapes = {"images": {0: torch.export.Dim("batch", min=1)}}
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=dynamic_shapes,
        opset_version=opset_version,
        verbose=False,
    )
    program.model.metadata_props.update(metadata)
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    external = parameter_bytes > _EXTERNAL_DATA_BYTES
    with staged_writes(path, folder=False) as staging:
        program.save(staging / path.name, external_data=external)
    return path


def _check_opset(opset_version: int | None) -> None:
    """Refuse an opset the exporter cannot write (before minutes of tracing)."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if opset_version is not None and not FIRST_OPSET <= opset_version <= newest:
        raise CheckpointError(
            f"ONNX opset {opset_version}: the exporter writes opsets {FIRST_OPSET} to {newest}"
        )


def onnx_metadata(model: VisionTransformer) -> dict[str, str]:
    """The graph's metadata, every value a string (JSON for lists): "image_size" [height, width],
    "mean" and "std" per channel (inputs are (pixels / 255 - mean) / std), "interpolation" of
    the resize, "resize" (the whole image, no crop) and, when the weights record them,
    "class_names", one per output: the model's `preprocessing` record."""
    preprocessing = model.preprocessing
    metadata = {
        "image_size": json.dumps(list(preprocessing.resolution)),
        "mean": json.dumps(list(preprocessing.mean)),
        "std": json.dumps(list(preprocessing.std)),
        "interpolation": preprocessing.interpolation,
        "resize": "whole image to image_size, no crop; then pixels / 255, minus mean, over std",
    }
    if (names := model_class_names(model)) is not None:
        metadata["class_names"] = json.dumps(list(names))
    return metadata
