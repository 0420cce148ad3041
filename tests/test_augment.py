"""Batch augmentation on the device: shapes, value ranges and that each switch does what it says."""

from __future__ import annotations

import random

import pytest
import torch
from torchvision.transforms import v2

from vitcompress.augment import BatchTransform
from vitcompress.config import AUTO_AUGMENT_CHOICES, AugmentOptions, TrainConfig
from vitcompress.datasets.shapes import generate
from vitcompress.errors import UserError
from vitcompress.memory import current_rss, peak_rss, reset_peak_rss

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


def erased_boxes(mode: str, prob: float, n: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """Random erasing alone on ``n`` white 32 px images normalised to 1: the train output and where it is not 1."""
    torch.manual_seed(0)
    white = torch.full((n, 32, 32, 3), 255, dtype=torch.uint8)
    options = AugmentOptions(crop="none", hflip=False, random_erase=prob, random_erase_mode=mode)
    x = BatchTransform(32, [0, 0, 0], [1, 1, 1], options).train(white)
    return x, (x != 1).all(dim=1)  # n x 32 x 32: the erased pixels (all three channels changed)


def test_random_erasing_erases_one_box_in_the_given_share_of_images() -> None:
    x, erased = erased_boxes("const", 0.25)
    hit = erased.flatten(1).any(dim=1)
    assert 0.20 < hit.float().mean() < 0.30  # 0.25 +- 5 standard deviations of 2,000 draws
    in_box = erased.unsqueeze(1).expand_as(x)  # the same pixels in every channel
    assert torch.all(x[~in_box] == 1) and torch.all(x[in_box] == 0)
    for mask in erased[hit]:  # one axis-aligned box: the mask is the outer product of its rows and columns
        rows, cols = mask.any(dim=1), mask.any(dim=0)
        assert torch.equal(mask, rows.view(-1, 1) & cols.view(1, -1))
        assert mask.sum() < 32 * 32  # never the whole image


def test_random_erasing_boxes_are_distributed_as_timms() -> None:
    """Same area and aspect rules as timm's per-image ``RandomErasing``: the mean erased share and the share of
    images left whole (no box fitted in ten attempts) agree within sampling noise."""
    from timm.data.random_erasing import RandomErasing

    _, ours = erased_boxes("const", 1.0)
    random.seed(0)  # timm draws its boxes with Python's random module
    theirs = RandomErasing(probability=1.0, mode="const", device="cpu")(torch.ones(2000, 3, 32, 32)) == 0
    ours_share, theirs_share = ours.flatten(1).float().mean(1), theirs.all(dim=1).flatten(1).float().mean(1)
    assert abs(ours_share.mean() - theirs_share.mean()) < 0.01  # mean about 0.17; its standard error about 0.002
    assert abs((ours_share == 0).float().mean() - (theirs_share == 0).float().mean()) < 0.02


def test_random_erasing_pixel_mode_fills_with_standard_normal_noise() -> None:
    x, erased = erased_boxes("pixel", 1.0)
    noise = x[erased.unsqueeze(1).expand_as(x)]
    assert noise.numel() > 100_000
    assert abs(noise.mean()) < 0.01 and abs(noise.std() - 1) < 0.01


@pytest.mark.parametrize(("options", "message"), [(dict(random_erase=1.5), "--random-erase 1.5"),
                                                  (dict(random_erase_mode="rand"), "--random-erase-mode 'rand'")])
def test_bad_random_erasing_options_are_user_errors(options: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        TrainConfig(augment=AugmentOptions(**options)).validate()


def test_eval_pixels_of_a_whole_test_split_are_resized_a_chunk_at_a_time() -> None:
    """2,000 CIFAR-sized images at 224 px: the same pixels as one image at a time, without the float copy of the
    whole split (1.2 GB here; 6 GB for CIFAR-10's test split) that converting them in one go held."""
    stored = torch.randint(0, 256, (2000, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    t = BatchTransform(224, MEAN, STD)
    reset_peak_rss()
    before = current_rss()
    pixels = t.eval_pixels(stored)
    added = peak_rss() - before
    assert pixels.shape == (2000, 224, 224, 3) and pixels.dtype == torch.uint8
    for i in (0, 255, 256, 1999):  # either side of a chunk boundary, and the last
        assert torch.equal(pixels[i], t.eval_pixels(stored[i : i + 1])[0])
    assert added < 2 * pixels.numel()  # the result and one chunk's floats; all at once, about 5x the result
