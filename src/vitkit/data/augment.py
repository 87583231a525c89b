"""The training augmentation of whole uint8 batches, its randomness keyed by image, not by process.

- Inception crop ("random resized crop", Szegedy et al. 2015; the paper's and AugReg's training
  augmentation): per image a box of random area fraction in `crop_scale` and aspect ratio in
  `crop_ratio`, resampled bilinearly to the model's resolution by one `grid_sample` call for the
  whole batch (data/transforms.py; no antialiasing: crops shrink by at most the image/resolution
  ratio, and exactly halving averages 2x2 blocks).
- Horizontal flip with probability 1/2 per image, folded into the crop's sampling grid.
- Optional RandAugment (Cubuk et al. 2020; torchvision's implementation, applied per image so that
  every image draws its own operations).
- Optional Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019): one mixing weight per global
  batch; each image is mixed with its partner, the image whose index in the global batch differs
  in the lowest bit (0 with 1, 2 with 3, ...).

Every random number is a function of a key (the trainer passes (seed, step)) and of the image's
index in the global batch: never of a generator's state or of which process holds the image. So N
processes, each holding a slice of the global batch, crop, flip and mix every image as one process
would, and a resumed run draws what the interrupted one would have, without a saved generator
state. (torchvision's MixUp and CutMix draw from the global generator and pair each image with its
neighbour in the local batch, which is why the mixing is written here.)

Training targets are always class probabilities (B, K): one-hot, smoothed or mixed, so the loss
has one form whatever the options.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vitkit.data.token_budget import size_for_token_budget
from vitkit.data.transforms import crop_and_resize, normalize, resize

# Mixed into every key, so that the augmentation's draws never coincide with the loader's
# permutations, which are seeded by (seed, epoch).
AUGMENT_STREAM = 0xA06
CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before its fallback
# Per-image uniforms: flip, then the crop's 2 x CROP_ATTEMPTS draws and its position (x, y).
_FLIP, _CROP = 0, slice(1, 3 + 2 * CROP_ATTEMPTS)
_COLUMNS = 3 + 2 * CROP_ATTEMPTS


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """What the training augmentation does; everything but the output is optional."""

    resolution: tuple[int, int]
    num_classes: int
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    # Inception crop; None resizes the whole image instead.
    crop_scale: tuple[float, float] | None = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    randaugment: tuple[int, int] | None = None  # (number of ops, magnitude), e.g. (2, 10)
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    label_smoothing: float = 0.0
    # NaViT: (pixels per patch, most patches): each crop keeps its aspect ratio and is resized to
    # that budget (data/token_budget.py) instead of to `resolution`; images come out as a list.
    token_budget: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.token_budget is not None and (self.mixup_alpha or self.cutmix_alpha):
            raise ValueError("mixup and cutmix mix images of one size; a token budget gives many")


def random_crop_boxes(
    uniforms: torch.Tensor,
    height: int | torch.Tensor,
    width: int | torch.Tensor,
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> torch.Tensor:
    """Inception-crop boxes (B, 4) as (x1, y1, x2, y2) in pixel coordinates, from uniforms in
    [0, 1) of shape (B, 2 * CROP_ATTEMPTS + 2), of images `height` x `width` (one size, or (B,)
    sizes: each image's own).

    Like torchvision's RandomResizedCrop: up to CROP_ATTEMPTS draws of area fraction (uniform in
    `scale`) and aspect ratio (log-uniform in `ratio`), the first that fits is kept; an image with
    no fitting draw gets the largest centred box whose aspect ratio lies in `ratio`. Boxes are
    continuous (sub-pixel); `crop_and_resize` samples them exactly.
    """
    batch = len(uniforms)
    low, high = math.log(ratio[0]), math.log(ratio[1])
    fractions = scale[0] + uniforms[:, :CROP_ATTEMPTS] * (scale[1] - scale[0])
    aspect = (low + uniforms[:, CROP_ATTEMPTS : 2 * CROP_ATTEMPTS] * (high - low)).exp()
    # (B, 1) float32 sides: exact for whole numbers of pixels.
    height, width = (
        torch.as_tensor(side, dtype=torch.float32, device=uniforms.device).expand(batch)[:, None]
        for side in (height, width)
    )
    area = height * width
    box_w = (fractions * area * aspect).sqrt()
    box_h = (fractions * area / aspect).sqrt()
    fits = (box_w <= width) & (box_h <= height)
    first = fits.float().argmax(dim=1)  # index of the first fitting attempt (0 when none fits)
    rows = torch.arange(batch, device=uniforms.device)
    box_w, box_h = box_w[rows, first], box_h[rows, first]
    height, width = height[:, 0], width[:, 0]

    # Fallback: the whole image, clamped to the allowed aspect ratios, centred (in float64, as
    # torchvision computes it in Python).
    sides = height.double(), width.double()
    fallback_w = torch.where(sides[1] / sides[0] > ratio[1], sides[0] * ratio[1], sides[1])
    fallback_h = torch.where(sides[1] / sides[0] < ratio[0], sides[1] / ratio[0], sides[0])
    fallback_w, fallback_h = fallback_w.float(), fallback_h.float()
    none_fit = ~fits.any(dim=1)
    box_w = torch.where(none_fit, fallback_w, box_w)
    box_h = torch.where(none_fit, fallback_h, box_h)

    x1 = uniforms[:, 2 * CROP_ATTEMPTS] * (width - box_w)
    y1 = uniforms[:, 2 * CROP_ATTEMPTS + 1] * (height - box_h)
    x1 = torch.where(none_fit, (width - box_w) / 2, x1)
    y1 = torch.where(none_fit, (height - box_h) / 2, y1)
    return torch.stack([x1, y1, x1 + box_w, y1 + box_h], dim=1)


@dataclass(frozen=True)
class BatchDraws:
    """The random numbers of the images [first, first + count) of a global batch."""

    uniforms: np.ndarray  # (count, _COLUMNS) in [0, 1): flip, crop
    image_seeds: np.ndarray  # (count,): each image's RandAugment seed
    partners: np.ndarray  # (count,): the local index each image is mixed with (itself: unmixed)
    mixing: str | None  # "mixup", "cutmix" or None, for the whole global batch
    weight: float  # the mixing weight of each image itself (lambda)
    centre: tuple[float, float]  # CutMix's box centre, as fractions of the width and height


def draw(
    config: AugmentConfig, key: Sequence[int], *, first: int, count: int, total: int
) -> BatchDraws:
    """The draws of images [first, first + count) of a global batch of `total` under `key`:
    those of the whole batch, cut to the slice, so any slicing of it draws the same."""
    per_image, per_batch = np.random.SeedSequence([AUGMENT_STREAM, *key]).spawn(2)
    images = np.random.default_rng(per_image)
    uniforms = images.random((total, _COLUMNS))[first : first + count]
    image_seeds = images.integers(0, 2**63, size=total)[first : first + count]
    partners = (np.arange(first, first + count) ^ 1) - first
    partners = np.where((partners >= 0) & (partners < count), partners, np.arange(count))

    batch = np.random.default_rng(per_batch)
    choices = [
        (name, alpha)
        for name, alpha in (("mixup", config.mixup_alpha), ("cutmix", config.cutmix_alpha))
        if alpha > 0
    ]
    mixing, weight = None, 1.0
    if choices:
        mixing, alpha = choices[int(batch.random() * len(choices))]
        weight = float(batch.beta(alpha, alpha))
    centre = (float(batch.random()), float(batch.random()))
    return BatchDraws(uniforms, image_seeds, partners, mixing, weight, centre)


def mix(
    inputs: torch.Tensor, targets: torch.Tensor, draws: BatchDraws
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (a weighted sum of the two images) or CutMix (a box of the partner pasted in, of
    area 1 - weight, the target weighted by the box's area after clipping to the image)."""
    partners = torch.as_tensor(draws.partners, device=inputs.device)
    weight = draws.weight
    if draws.mixing == "mixup":
        inputs = weight * inputs + (1 - weight) * inputs[partners]
    elif draws.mixing == "cutmix":
        height, width = inputs.shape[-2:]
        half = 0.5 * math.sqrt(1 - weight)
        centre_x, centre_y = draws.centre[0] * width, draws.centre[1] * height
        x1, x2 = (round(min(max(centre_x + s * half * width, 0), width)) for s in (-1, 1))
        y1, y2 = (round(min(max(centre_y + s * half * height, 0), height)) for s in (-1, 1))
        inputs = inputs.clone()
        inputs[..., y1:y2, x1:x2] = inputs[partners][..., y1:y2, x1:x2]
        weight = 1 - (x2 - x1) * (y2 - y1) / (width * height)
    else:
        return inputs, targets
    return inputs, weight * targets + (1 - weight) * targets[partners]


class TrainAugment:
    """uint8 images (B, C, H, W) and int labels (B,) -> normalised float images at the model's
    resolution (with a token budget: a list of B images of their own sizes) and class
    probabilities (B, num_classes)."""

    def __init__(self, config: AugmentConfig):
        self.config = config
        self._randaugment = None
        if config.randaugment:
            from torchvision.transforms import v2

            num_ops, magnitude = config.randaugment
            self._randaugment = v2.RandAugment(num_ops=num_ops, magnitude=magnitude)

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        key: Sequence[int],
        first: int = 0,
        total: int | None = None,
        sizes: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment `images`, the images [first, first + B) of a global batch of `total` (default
        B) whose randomness `key` names (see the module docstring). `sizes` (B, 2): each image
        is only the top-left (h, w) of its canvas (`ArrayDataset.sizes`), so crops, and without
        crops the resize, take that region alone."""
        config = self.config
        batch = len(images)
        draws = draw(config, key, first=first, count=batch, total=total or batch)
        uniforms = torch.as_tensor(draws.uniforms, dtype=torch.float32).to(images.device)
        flip = uniforms[:, _FLIP] < 0.5 if config.hflip else None
        pixels = images.float()
        regions = _regions(images.shape[-2:], sizes, batch)
        boxes = None
        if config.crop_scale is not None:
            # One size for the batch, or each image's own: tensors straight from `sizes`.
            height, width = images.shape[-2:] if sizes is None else sizes.to(uniforms.device).T
            boxes = random_crop_boxes(uniforms[:, _CROP], height, width,
                                      scale=config.crop_scale, ratio=config.crop_ratio)  # fmt: skip
        if config.token_budget is not None:
            return self._at_token_budget(
                pixels, labels, boxes, regions, flip, draws.image_seeds, config.token_budget
            )
        if boxes is not None:
            pixels = crop_and_resize(pixels, boxes, config.resolution, flip=flip)
        elif sizes is None:
            pixels = resize(pixels, config.resolution)
            if flip is not None:
                pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
        else:
            targets = [config.resolution] * batch
            resized = torch.empty(batch, pixels.shape[1], *config.resolution, device=pixels.device)
            for rows, group in _resampled(pixels, None, regions, targets, flip):
                resized[rows] = group
            pixels = resized
        if self._randaugment is not None:
            pixels = self._apply_randaugment(pixels, draws.image_seeds)

        inputs = normalize(pixels, config.mean, config.std, inplace=True)  # pixels is ours
        inputs, targets = mix(inputs, self._targets(labels.to(images.device)), draws)
        return inputs, self._smoothed(targets)

    def _targets(self, labels: torch.Tensor) -> torch.Tensor:
        return F.one_hot(labels, self.config.num_classes).float()

    def _smoothed(self, targets: torch.Tensor) -> torch.Tensor:
        smoothing = self.config.label_smoothing
        if not smoothing:
            return targets
        return targets * (1 - smoothing) + smoothing / self.config.num_classes

    def _at_token_budget(
        self,
        pixels: torch.Tensor,
        labels: torch.Tensor,
        boxes: torch.Tensor | None,
        regions: list[tuple[int, int]],
        flip: torch.Tensor | None,
        seeds: np.ndarray,
        budget: tuple[int, int],
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """NaViT's inputs: each image's crop (`boxes`, by the same draws as the square path) or,
        without crops, the whole image (its region of the canvas), resized at its own aspect
        ratio to the token budget, flipped, RandAugment-ed and normalised; the images that come
        out at one size are resampled together."""
        config = self.config
        patch, most = budget
        if boxes is not None:
            regions = [(max(1, round(y2 - y1)), max(1, round(x2 - x1)))
                       for x1, y1, x2, y2 in boxes.tolist()]  # fmt: skip
        sizes = [
            size_for_token_budget(height, width, patch_size=patch, max_tokens=most)
            for height, width in regions
        ]
        inputs: list[torch.Tensor] = [pixels[0]] * len(pixels)  # every entry is replaced below
        for rows, images in _resampled(pixels, boxes, regions, sizes, flip):
            if self._randaugment is not None:
                images = self._apply_randaugment(images, seeds[rows])
            for index, image in zip(rows, normalize(images, config.mean, config.std)):
                inputs[index] = image
        return inputs, self._smoothed(self._targets(labels.to(pixels.device)))

    def _apply_randaugment(self, pixels: torch.Tensor, seeds: np.ndarray) -> torch.Tensor:
        """torchvision's RandAugment on each image, its operations drawn from the image's own
        seed; the global generator is left as it was."""
        as_uint8 = pixels.round().clamp(0, 255).to(torch.uint8)
        augmented = []
        with torch.random.fork_rng(devices=[]):
            for image, seed in zip(as_uint8, seeds):
                torch.manual_seed(int(seed))
                augmented.append(self._randaugment(image))
        return torch.stack(augmented).float()


def _regions(
    canvas: tuple[int, int], sizes: torch.Tensor | None, batch: int
) -> list[tuple[int, int]]:
    """Each image's (h, w): its own where `sizes` gives them, else the whole canvas."""
    if sizes is None:
        return [(int(canvas[0]), int(canvas[1]))] * batch
    return [(int(height), int(width)) for height, width in sizes.tolist()]


def _groups(keys: Sequence[object]) -> list[tuple[object, list[int]]]:
    """The distinct keys in first-seen order, each with the indices that hold it."""
    rows: dict[object, list[int]] = {}
    for index, key in enumerate(keys):
        rows.setdefault(key, []).append(index)
    return list(rows.items())


def _resampled(
    pixels: torch.Tensor,
    boxes: torch.Tensor | None,
    regions: list[tuple[int, int]],
    sizes: Sequence[tuple[int, int]],
    flip: torch.Tensor | None,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Image i resampled to `sizes[i]`, mirrored where `flip[i]`: its box `boxes[i]` cropped
    (`crop_and_resize`), or without boxes its top-left `regions[i]` resized whole (`resize`,
    antialiased). One call per group of images that share a size (and, resized whole, a region),
    yielded as (the images' indices, the images)."""
    keys = list(sizes) if boxes is not None else list(zip(sizes, regions))
    for _, rows in _groups(keys):
        chosen = torch.tensor(rows, device=pixels.device)
        chosen_flip = None if flip is None else flip[chosen]
        size = sizes[rows[0]]
        if boxes is not None:
            yield rows, crop_and_resize(pixels[chosen], boxes[chosen], size, flip=chosen_flip)
            continue
        height, width = regions[rows[0]]
        images = resize(pixels[chosen][..., :height, :width], size)
        if chosen_flip is not None:
            images = torch.where(chosen_flip[:, None, None, None], images.flip(-1), images)
        yield rows, images
