"""Masked patch prediction: the paper's self-supervised pre-training (section 4.6, Appendix B.1.2).

"We corrupt 50% of patch embeddings by either replacing their embeddings with a learnable [mask]
embedding (80%), a random other patch embedding (10%) or just keeping them as is (10%) ... we
predict the 3-bit, mean color (i.e., 512 colors in total) of every corrupted patch using their
respective patch representations." BERT's masked language modelling, with a patch's mean colour
as its word.

Here "patch embedding" is the linear projection of a patch, before the [class] token and the
position embeddings are added (so a corrupted patch keeps its position), and the "random other
patch" is drawn from all the other patches of the batch. Which patches are corrupted, and how, is
drawn from torch's global generator, which training seeds at every step: resuming draws the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.models.config import ViTConfig
from vitkit.models.preprocessing import Preprocessing
from vitkit.models.vit import VisionTransformer

COLOUR_LEVELS = 8  # 3 bits per channel
NUM_COLOURS = COLOUR_LEVELS**3  # 512 classes: red * 64 + green * 8 + blue
CORRUPTED_SHARE = 0.5  # of each image's patches
# What happens to a corrupted patch's embedding, and how often.
MASKED, REPLACED, KEPT = 0, 1, 2
MASKED_SHARE, REPLACED_SHARE = 0.8, 0.1  # the rest (0.1) are kept as they are


def mean_colour_classes(pixels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Images (N, 3, H, W) with values in [0, 1] -> each patch's 3-bit mean colour, (N, h*w) in
    0..511: the mean of each channel over the patch, in 8 levels (level i covers [i/8, (i+1)/8),
    1.0 is level 7), as red * 64 + green * 8 + blue. `grid` (h, w) is the model's patch grid."""
    means = F.adaptive_avg_pool2d(pixels, grid)  # (N, 3, h, w)
    levels = (means * COLOUR_LEVELS).floor().clamp(0, COLOUR_LEVELS - 1).long()
    red, green, blue = levels.unbind(dim=1)
    return (red * COLOUR_LEVELS**2 + green * COLOUR_LEVELS + blue).flatten(1)


@dataclass(frozen=True)
class Corruption:
    """Which patches of each image are corrupted and how: `positions` (N, k) the corrupted
    patches, `kinds` (N, k) MASKED, REPLACED or KEPT, `sources` (N, k) for REPLACED the patch
    copied, as image * patches + patch in the batch (never the patch itself)."""

    positions: torch.Tensor
    kinds: torch.Tensor
    sources: torch.Tensor

    def apply(self, patches: torch.Tensor, mask_embedding: torch.Tensor) -> torch.Tensor:
        """Patch embeddings (N, P, D) with the corrupted ones replaced; `mask_embedding` (D,)."""
        batch, count, width = patches.shape
        where = self.positions.unsqueeze(-1).expand(-1, -1, width)
        chosen = patches.gather(1, where)
        others = patches.reshape(batch * count, width)[self.sources]
        kinds = self.kinds.unsqueeze(-1)
        mask = mask_embedding.to(patches.dtype).expand_as(chosen)
        new = torch.where(kinds == MASKED, mask, torch.where(kinds == REPLACED, others, chosen))
        return patches.scatter(1, where, new)


def draw_corruption(batch: int, patches: int, *, device: torch.device) -> Corruption:
    """Corrupt round(CORRUPTED_SHARE * patches) patches of each image, chosen uniformly without
    replacement; each is masked, replaced or kept with probabilities 0.8, 0.1 and 0.1."""
    corrupted = max(1, round(CORRUPTED_SHARE * patches))
    positions = torch.rand(batch, patches, device=device).argsort(dim=1)[:, :corrupted]
    draws = torch.rand(batch, corrupted, device=device)
    kinds = torch.full_like(positions, KEPT)
    kinds[draws < MASKED_SHARE + REPLACED_SHARE] = REPLACED
    kinds[draws < MASKED_SHARE] = MASKED
    own = torch.arange(batch, device=device).unsqueeze(1) * patches + positions
    other = torch.randint(0, batch * patches - 1, positions.shape, device=device)
    sources = other + (other >= own).long()  # skips the patch itself
    return Corruption(positions, kinds, sources)


class MaskedPatchPrediction(NamedTuple):
    """What the pre-training model returns: the colour logits of every corrupted patch
    (N, k, 512) and the colour classes they should predict (N, k)."""

    logits: torch.Tensor
    targets: torch.Tensor


def masked_patch_loss(prediction: MaskedPatchPrediction, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the corrupted patches' colours, averaged over them; the image labels
    (the training step passes them) are not used: the task needs none."""
    del labels
    return F.cross_entropy(prediction.logits.flatten(0, 1).float(), prediction.targets.flatten())


class MaskedPatchModel(nn.Module):
    """Masked patch prediction's pre-training model: a plain Vision Transformer `encoder`
    (without a head: the task predicts colours, not classes) and the task's own parts around it,
    a learned [mask] embedding and a linear head from each patch's output token to its 512
    colours. Its forward pass corrupts (through the encoder's `corrupt` hook), encodes and
    predicts (MaskedPatchPrediction); `encoder` alone is the model to fine-tune or evaluate, so
    the pre-training parts never reach a saved model.

    Training reads the same of every model it trains (training/tasks.py): `config`,
    `preprocessing` and `blocks` (checkpointed, sharded and given to Muon one by one) are the
    encoder's, and `no_weight_decay()` names the encoder's and the [mask] embedding."""

    def __init__(self, config: ViTConfig, *, preprocessing: Preprocessing | None = None):
        if config.in_chans != 3:
            raise ValueError(f"masked patch prediction predicts RGB colours; in_chans is "
                             f"{config.in_chans}")  # fmt: skip
        if config.num_classes != 0:
            raise ValueError(f"the encoder pre-trains without a head (num_classes=0); "
                             f"num_classes is {config.num_classes}")  # fmt: skip
        super().__init__()
        self.encoder = VisionTransformer(config, preprocessing=preprocessing)
        self.mask_token = nn.Parameter(torch.empty(config.width))
        self.colour_head = nn.Linear(config.width, NUM_COLOURS)
        with torch.no_grad():
            nn.init.normal_(self.mask_token, std=0.02)  # as the position embeddings
            nn.init.xavier_uniform_(self.colour_head.weight)
            nn.init.zeros_(self.colour_head.bias)

    @property
    def config(self) -> ViTConfig:
        return self.encoder.config

    @property
    def preprocessing(self) -> Preprocessing:
        return self.encoder.preprocessing

    @property
    def blocks(self) -> nn.ModuleList:
        return self.encoder.blocks

    def no_weight_decay(self) -> set[str]:
        """The encoder's (under "encoder."), and the [mask] embedding: a learned token, as the
        [class] token is."""
        return {"mask_token"} | {f"encoder.{name}" for name in self.encoder.no_weight_decay()}

    def forward(self, images: torch.Tensor) -> MaskedPatchPrediction:
        """Normalised images (N, 3, H, W) -> the corrupted patches' colour logits and targets."""
        encoder = self.encoder
        grid = encoder.patch_embed.grid_size(images)
        mean = images.new_tensor(encoder.preprocessing.mean).view(1, -1, 1, 1)
        std = images.new_tensor(encoder.preprocessing.std).view(1, -1, 1, 1)
        with torch.no_grad():
            colours = mean_colour_classes((images.float() * std + mean).clamp(0, 1), grid)
        corruption = draw_corruption(len(images), grid[0] * grid[1], device=images.device)
        tokens = encoder.forward_features(
            images, corrupt=lambda patches: corruption.apply(patches, self.mask_token)
        )
        patch_tokens = tokens[:, encoder.config.num_prefix_tokens :]  # (N, h*w, D)
        where = corruption.positions.unsqueeze(-1).expand(-1, -1, patch_tokens.shape[-1])
        logits = self.colour_head(patch_tokens.gather(1, where))  # (N, k, 512)
        return MaskedPatchPrediction(logits, colours.gather(1, corruption.positions))
