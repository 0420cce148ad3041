"""Batch augmentation on the device: shapes, value ranges and that each switch does what it says."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from vitcompress.augment import BatchTransform
from vitcompress.config import AUTO_AUGMENT_CHOICES, AugmentOptions
from vitcompress.datasets.shapes import generate

MEAN, STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return generate(2, seed=0).images  # 20 x 32 x 32 x 3 uint8


@pytest.mark.parametrize("crop", ["pad", "rrc", "none"])
@pytest.mark.parametrize("auto", AUTO_AUGMENT_CHOICES)
def test_train_output_shape_and_range(batch: torch.Tensor, crop: str, auto: str) -> None:
    t = BatchTransform(48, MEAN, STD, AugmentOptions(crop=crop, auto_augment=auto, color_jitter=0.4))
    x = t.train(batch)
    assert x.shape == (20, 3, 48, 48) and x.dtype == torch.float32
    assert x.min() >= -1.0 - 1e-5 and x.max() <= 1.0 + 1e-5


@pytest.mark.parametrize(("auto", "policy"), [("autoaugment", v2.AutoAugmentPolicy.IMAGENET),
                                               ("autoaugment-cifar10", v2.AutoAugmentPolicy.CIFAR10),
                                               ("autoaugment-svhn", v2.AutoAugmentPolicy.SVHN)])
def test_autoaugment_uses_the_named_policy(auto: str, policy: v2.AutoAugmentPolicy) -> None:
    assert BatchTransform(32, MEAN, STD, AugmentOptions(auto_augment=auto)).auto_augment.policy == policy


def test_no_augmentation_equals_eval(batch: torch.Tensor) -> None:
    t = BatchTransform(32, MEAN, STD, AugmentOptions(crop="none", hflip=False))
    assert torch.equal(t.train(batch), t.eval(batch))


def test_pad_crop_shifts_content_per_image(batch: torch.Tensor) -> None:
    torch.manual_seed(0)
    t = BatchTransform(32, MEAN, STD, AugmentOptions(crop="pad", crop_padding=0.125, hflip=False))
    x, ref = t.train(batch), t.eval(batch)
    changed = [(x[i] != ref[i]).any().item() for i in range(len(batch))]
    assert sum(changed) >= 15  # P(offset 0,0) is 1/81 per image
    # each crop is a shifted copy: some 24x24 window of the original appears unchanged
    assert any(torch.equal(x[0, :, 4:28, 4:28], ref[0, :, 4 + dy:28 + dy, 4 + dx:28 + dx])
               for dy in range(-4, 5) for dx in range(-4, 5))


def test_flip_mirrors_some_images(batch: torch.Tensor) -> None:
    torch.manual_seed(1)
    t = BatchTransform(32, MEAN, STD, AugmentOptions(crop="none", hflip=True))
    x, ref = t.train(batch), t.eval(batch)
    flipped = [torch.equal(x[i], ref[i].flip(-1)) for i in range(len(batch))]
    kept = [torch.equal(x[i], ref[i]) for i in range(len(batch))]
    assert all(f or k for f, k in zip(flipped, kept, strict=True)) and 3 <= sum(flipped) <= 17


def test_eval_centre_crops_larger_storage() -> None:
    img = torch.zeros(1, 37, 37, 3, dtype=torch.uint8)
    img[:, 2:34, 2:34] = 255  # the centre 32x32 (offset (37 - 32) // 2 = 2) is white
    x = BatchTransform(32, [0, 0, 0], [1, 1, 1]).eval(img)
    assert x.shape == (1, 3, 32, 32) and torch.all(x == 1)


def test_auto_augment_draws_once_per_group() -> None:
    same = torch.randint(0, 256, (1, 32, 32, 3), dtype=torch.uint8).expand(24, -1, -1, -1).contiguous()

    def distinct_outputs(group: int) -> int:
        torch.manual_seed(0)
        options = AugmentOptions(crop="none", hflip=False, auto_augment="trivialaugment", auto_augment_group=group)
        out = BatchTransform(32, MEAN, STD, options).train(same)
        return len({bytes(img.numpy()) for img in out})

    assert distinct_outputs(24) == 1  # one draw for the whole batch
    assert distinct_outputs(8) <= 3
    assert distinct_outputs(1) > 5  # a draw per image
