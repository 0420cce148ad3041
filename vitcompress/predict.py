"""``vitcompress predict``: classify image files with any artifact, ONNX export or TensorRT engine.

Images get the preprocessing the model was evaluated with: the shorter side resized and centre-
cropped to the storage size a folder dataset uses, then the evaluation crop and resize to the
model's input (``BatchTransform.eval_pixels``), so ``predict`` and ``eval`` agree on the same files::

    from vitcompress.predict import Classifier
    classify = Classifier("runs/int8")
    classify("cat.jpg")            # [("cat", 0.91), ("dog", 0.05), ...]
    classify([img1, "b.png"])      # one list per image
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vitcompress.augment import BatchTransform
from vitcompress.datasets.folder import square_pixels, storage_side
from vitcompress.errors import UserError
from vitcompress.runtimes import open_runtime
from vitcompress.sources import ModelSource, open_source

ImageLike = str | Path | Image.Image


class Classifier:
    """A model from ``src`` (any path ``open_source`` knows) that takes PIL images or paths."""

    def __init__(self, src: str | Path, backend: str | None = None, threads: int | None = None) -> None:
        self.source: ModelSource = open_source(src)
        self.runtime = open_runtime(self.source, backend, threads)
        self.transform = BatchTransform(self.source.img_size, self.source.mean, self.source.std)

    @property
    def classes(self) -> list[str]:
        return self.source.classes

    def pixels(self, image: ImageLike) -> torch.Tensor:
        """uint8 ``img_size x img_size x 3`` pixels of one image, as the model was evaluated."""
        img = _open(image)
        side = storage_side(img.size, self.source.img_size)
        stored = torch.from_numpy(square_pixels(img.convert("RGB"), side)).unsqueeze(0)
        return self.transform.eval_pixels(stored)[0]

    def probabilities(self, images: list[ImageLike]) -> np.ndarray:
        batch = torch.stack([self.pixels(image) for image in images])
        logits = self.runtime.run(self.source.prepare(batch)).astype(np.float64)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    def __call__(self, images: ImageLike | list[ImageLike], top_k: int = 5) -> Any:
        """Top-``top_k`` ``(class, probability)`` pairs for one image, or a list of them for a list."""
        single = not isinstance(images, list)
        batch = [images] if single else images
        probs = self.probabilities(batch)
        k = max(1, min(top_k, len(self.classes)))
        answers = [[(self.classes[i], float(p[i])) for i in np.argsort(-p)[:k]] for p in probs]
        return answers[0] if single else answers


def _open(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    try:
        with Image.open(image) as img:
            img.load()
            return img
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"cannot read image {image} ({type(exc).__name__})",
                        "pass image files PIL can open (JPEG, PNG, ...)") from None


def predict(src: str, images: list[str], top_k: int = 5, backend: str | None = None) -> list[dict[str, Any]]:
    """``vitcompress predict``: one ``{"image", "top"}`` record per image file."""
    classifier = Classifier(src, backend)
    for image in images:  # name an unreadable file before running anything
        _open(image)
    answers = classifier(list(images), top_k=top_k)
    return [{"image": image, "top": [{"class": c, "probability": round(p, 6)} for c, p in answer]}
            for image, answer in zip(images, answers, strict=True)]
