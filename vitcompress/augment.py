"""Augmentation of whole uint8 batches on the training device (GPU or CPU).

Per-sample random crops, flips and colour jitter are tensor operations over the batch;
RandAugment / AutoAugment / TrivialAugment come from torchvision and are applied per group of
``--auto-augment-group`` images (each group draws its own operations): every call costs a chain of
Python dispatches, which on a GPU outweigh the arithmetic, so few large groups keep them cheap.
Random erasing follows timm's ``RandomErasing`` (its area, aspect and fill rules) but draws every
image's box at once, a fixed few dozen kernels per batch: timm's loops over the images in Python,
a few GPU launches for each image it erases.
MixUp/CutMix are applied afterwards by the training loop (timm's ``Mixup``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align
from torchvision.transforms import v2

from vitcompress.config import AugmentOptions

_AUTO_AUGMENT = {
    "randaugment": lambda: v2.RandAugment(num_ops=2, magnitude=9),
    "autoaugment": lambda: v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET),  # torchvision's default policy
    "autoaugment-cifar10": lambda: v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10),  # the policies searched on those data
    "autoaugment-svhn": lambda: v2.AutoAugment(v2.AutoAugmentPolicy.SVHN),
    "trivialaugment": lambda: v2.TrivialAugmentWide(),
}
# images resized at a time by eval_pixels: the float intermediate of a whole test split is gigabytes at 224 px
# (10,000 CIFAR images: 6 GB), and resizing is per image, so chunks give the same pixels
EVAL_PIXELS_CHUNK = 256


class BatchTransform:
    """uint8 ``N x S x S x 3`` batches to normalised float ``N x 3 x img_size x img_size``."""

    def __init__(self, img_size: int, mean: list[float], std: list[float], options: AugmentOptions | None = None) -> None:
        self.img_size = img_size
        self.mean_rgb, self.std_rgb = [float(v) for v in mean], [float(v) for v in std]
        self.options = options or AugmentOptions()
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        name = self.options.auto_augment
        self.auto_augment = _AUTO_AUGMENT[name]() if name != "none" else None

    def train(self, batch: torch.Tensor) -> torch.Tensor:
        o = self.options
        x = batch.permute(0, 3, 1, 2)
        if self.auto_augment is not None:
            x = torch.cat([self.auto_augment(group) for group in x.split(o.auto_augment_group)])
        x = x.float().div_(255)
        if o.crop == "pad":
            x = _pad_crop(x, round(o.crop_padding * x.shape[-1]))
        elif o.crop == "rrc":
            x = _random_resized_crop(x, self.img_size, o.rrc_min_scale)
        if o.hflip:
            flip = torch.rand(x.shape[0], device=x.device) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        if o.color_jitter > 0:
            x = _color_jitter(x, o.color_jitter)
        x = self._finish(_resize(x, self.img_size))
        if o.random_erase > 0:
            x = _random_erase(x, o.random_erase, o.random_erase_mode)
        return x

    def eval(self, batch: torch.Tensor) -> torch.Tensor:
        return self._finish(self._eval_view(batch))

    def eval_pixels(self, batch: torch.Tensor) -> torch.Tensor:
        """The uint8 ``N x img_size x img_size x 3`` pixels a deployed model is sent (what ``eval`` sees, unnormalised)."""
        if batch.shape[1] == self.img_size and batch.shape[2] == self.img_size:
            return batch
        out = torch.empty((len(batch), self.img_size, self.img_size, 3), dtype=torch.uint8, device=batch.device)
        for start in range(0, len(batch), EVAL_PIXELS_CHUNK):
            chunk = self._eval_view(batch[start : start + EVAL_PIXELS_CHUNK])
            out[start : start + len(chunk)] = chunk.mul_(255).round_().permute(0, 2, 3, 1)
        return out

    def model_input(self, pixels: torch.Tensor, takes_pixels: bool) -> np.ndarray:
        """What a deployed graph is fed for pixels at its size: the pixels, or normalised float NCHW."""
        return pixels.numpy() if takes_pixels else self.eval(pixels).numpy().astype(np.float32)

    def _eval_view(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.permute(0, 3, 1, 2).float().div_(255)
        side = x.shape[-1]
        if side > self.img_size:  # stored at img_size / crop_pct: centre crop, the usual eval protocol
            top = (side - self.img_size) // 2
            x = x[..., top : top + self.img_size, top : top + self.img_size]
        return _resize(x, self.img_size)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean.device != x.device:  # moved once, on the first batch
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        return (x - self.mean) / self.std


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)


def _pad_crop(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero-pad by ``pad`` and take a random crop of the original size from each image."""
    if pad <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    ox = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    rows = (oy + torch.arange(h, device=x.device)).view(n, h, 1)
    cols = (ox + torch.arange(w, device=x.device)).view(n, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)


def _random_resized_crop(x: torch.Tensor, out_size: int, min_scale: float) -> torch.Tensor:
    """Inception-style random-resized crop, one box per image, resampled by ``roi_align``."""
    n, _, h, w = x.shape
    dev = x.device
    area = torch.empty(n, device=dev).uniform_(min_scale, 1.0) * h * w
    log_ratio = torch.empty(n, device=dev).uniform_(math.log(3 / 4), math.log(4 / 3))
    bw = torch.sqrt(area * log_ratio.exp()).clamp(1, w)
    bh = torch.sqrt(area / log_ratio.exp()).clamp(1, h)
    x0 = torch.rand(n, device=dev) * (w - bw)
    y0 = torch.rand(n, device=dev) * (h - bh)
    boxes = torch.stack([torch.arange(n, device=dev, dtype=x.dtype), x0, y0, x0 + bw, y0 + bh], dim=1)
    return roi_align(x, boxes, output_size=out_size, spatial_scale=1.0, sampling_ratio=2, aligned=True)


def _color_jitter(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-image brightness, contrast and saturation factors drawn from ``[1 - s, 1 + s]``."""
    n = x.shape[0]

    def factor() -> torch.Tensor:
        return torch.empty(n, 1, 1, 1, device=x.device).uniform_(1 - strength, 1 + strength)

    x = x * factor()
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - gray.mean(dim=(2, 3), keepdim=True)) * factor() + gray.mean(dim=(2, 3), keepdim=True)
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - gray) * factor() + gray
    return x.clamp_(0, 1)


ERASE_AREA = (0.02, 1 / 3)  # timm's RandomErasing defaults: the box's share of the image,
ERASE_LOG_ASPECT = (math.log(0.3), math.log(1 / 0.3))  # and its height / width, drawn log-uniformly
ERASE_ATTEMPTS = 10  # timm's: draws until a box fits inside the image; an image none fits stays whole


def _random_erase(x: torch.Tensor, prob: float, mode: str) -> torch.Tensor:
    """With probability ``prob`` per image, fill one random box of the normalised batch: Gaussian noise per pixel
    (``pixel``) or zeros, the dataset's mean colour (``const``)."""
    n, _, h, w = x.shape
    dev = x.device
    area = torch.empty(n, ERASE_ATTEMPTS, device=dev).uniform_(*ERASE_AREA) * (h * w)
    aspect = torch.empty(n, ERASE_ATTEMPTS, device=dev).uniform_(*ERASE_LOG_ASPECT).exp()
    box_h, box_w = (area * aspect).sqrt().round().long(), (area / aspect).sqrt().round().long()
    fits = (box_h < h) & (box_w < w)
    first = fits.long().argmax(dim=1, keepdim=True)  # the first attempt that fits (any, if none does)
    box_h, box_w = box_h.gather(1, first), box_w.gather(1, first)  # n x 1
    top = (torch.rand(n, 1, device=dev) * (h - box_h + 1)).long()
    left = (torch.rand(n, 1, device=dev) * (w - box_w + 1)).long()
    erase = (torch.rand(n, 1, device=dev) < prob) & fits.any(dim=1, keepdim=True)
    rows, cols = torch.arange(h, device=dev).view(1, h), torch.arange(w, device=dev).view(1, w)
    in_rows = (rows >= top) & (rows < top + box_h) & erase  # n x h
    in_cols = (cols >= left) & (cols < left + box_w)  # n x w
    box = (in_rows.view(n, 1, h, 1) & in_cols.view(n, 1, 1, w))
    if mode == "const":
        return x.masked_fill(box, 0.0)
    noise = torch.randn(x.shape, device=dev, dtype=x.dtype)  # contiguous: randn_like of a strided view is slow on CPUs
    return torch.where(box, noise, x)
