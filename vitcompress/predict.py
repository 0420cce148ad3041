"""``vitcompress predict``: classify image files (or folders of them) with any artifact, ONNX export or TensorRT engine.

Images get the preprocessing the model was evaluated with: the shorter side resized and centre-
cropped to the storage size a folder dataset uses, then the evaluation crop and resize to the
model's input (``BatchTransform.eval_pixels``), so ``predict`` and ``eval`` agree on the same files::

    from vitcompress.predict import Classifier
    classify = Classifier("runs/int8")
    classify("cat.jpg")            # [("cat", 0.91), ("dog", 0.05), ...]
    classify([img1, "b.png"])      # one list per image
    classify.close()               # or ``with Classifier(...) as classify:`` (a Triton backend stops its server)

Images run through the model in batches of ``batch_size`` (fewer where a TensorRT engine's profile
stops earlier), so a folder of any size takes bounded memory.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from vitcompress.augment import BatchTransform
from vitcompress.config import PREDICT_BATCH_SIZE
from vitcompress.datasets.items import UNREADABLE, storage_side, stored_pixels
from vitcompress.datasets.listing import image_files_under
from vitcompress.datasets.streamed import default_workers
from vitcompress.errors import UserError, require
from vitcompress.runtimes import open_runtime
from vitcompress.sources import ModelSource, open_source

ImageLike = str | Path | Image.Image
MAX_READERS = 16  # threads decoding images


class UnreadableImage(UserError):
    """An image file PIL cannot open or decode, and PIL's reason."""

    def __init__(self, image: ImageLike, exc: Exception) -> None:
        self.reason = f"{type(exc).__name__}: {str(exc)[:160]}"
        super().__init__(f"cannot read image {image} ({self.reason})", "pass image files PIL can open (JPEG, PNG, ...)")


class Classifier:
    """A model from ``src`` (any path ``open_source`` knows) that takes PIL images or paths."""

    def __init__(self, src: str | Path, backend: str | None = None, threads: int | None = None,
                 batch_size: int = PREDICT_BATCH_SIZE) -> None:
        if batch_size < 1:
            raise UserError(f"--batch-size {batch_size} must be at least 1", "pass e.g. --batch-size 32")
        self.source: ModelSource = open_source(src)
        self.runtime = open_runtime(self.source, backend, threads, max_batch=batch_size)
        self.transform = BatchTransform(self.source.img_size, self.source.mean, self.source.std)
        self.batch_size = self.runtime.batch_limit(self.source, batch_size)
        # PIL decodes with the GIL released: a folder of photos is read by all cores, not one
        self._readers = ThreadPoolExecutor(max_workers=min(default_workers(), MAX_READERS))

    @property
    def classes(self) -> list[str]:
        return self.source.classes

    def close(self) -> None:
        """Release the runtime (a Triton server it started, a GPU context) and the image readers."""
        self.runtime.close()
        self._readers.shutdown()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def pixels(self, image: ImageLike) -> torch.Tensor:
        """uint8 ``img_size x img_size x 3`` pixels of one image, as the model was evaluated."""
        stored = torch.from_numpy(_stored(image, self.source.img_size)).unsqueeze(0)
        return self.transform.eval_pixels(stored)[0]

    def probabilities(self, images: list[ImageLike]) -> np.ndarray:
        """Class probabilities, one row per image; an image that cannot be read raises :class:`UnreadableImage`."""
        return self.readable_probabilities(images, skip_unreadable=False)[0]

    def readable_probabilities(self, images: list[ImageLike], skip_unreadable: bool = True,
                               ) -> tuple[np.ndarray, dict[int, UnreadableImage]]:
        """Class probabilities, one row per image, and which images could not be read (their index and why; their
        rows are NaN), so that one bad file in a folder of thousands does not stop the rest."""
        chunks: list[np.ndarray] = []
        unreadable: dict[int, UnreadableImage] = {}
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            pixels: dict[int, torch.Tensor] = {}
            for index, read in enumerate(self._readers.map(self._read, chunk)):
                if isinstance(read, UnreadableImage):
                    if not skip_unreadable:
                        raise read
                    unreadable[start + index] = read
                else:
                    pixels[index] = read
            chunks.append(self._batch_probabilities(pixels, len(chunk)))
        probs = np.concatenate(chunks) if chunks else np.zeros((0, len(self.classes)))
        return probs, unreadable

    def _read(self, image: ImageLike) -> torch.Tensor | UnreadableImage:
        try:
            return self.pixels(image)
        except UnreadableImage as exc:
            return exc

    def _batch_probabilities(self, pixels: dict[int, torch.Tensor], size: int) -> np.ndarray:
        probs = np.full((size, len(self.classes)), np.nan)
        if pixels:
            logits = self.runtime.run(self.source.prepare(torch.stack(list(pixels.values())))).astype(np.float64)
            exp = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs[list(pixels)] = exp / exp.sum(axis=1, keepdims=True)
        return probs

    def __call__(self, images: ImageLike | list[ImageLike], top_k: int = 5) -> Any:
        """Top-``top_k`` ``(class, probability)`` pairs for one image, or a list of them for a list."""
        single = not isinstance(images, list)
        batch = [images] if single else images
        answers = [self.top_classes(row, top_k) for row in self.probabilities(batch)]
        return answers[0] if single else answers

    def top_classes(self, probabilities: np.ndarray, top_k: int) -> list[tuple[str, float]]:
        """The ``top_k`` most probable ``(class, probability)`` pairs of one row of :meth:`probabilities` (every
        class when the model has fewer)."""
        check_top_k(top_k)
        k = min(top_k, len(self.classes))
        return [(self.classes[i], float(probabilities[i])) for i in np.argsort(-probabilities)[:k]]


def check_top_k(top_k: int) -> None:
    require(top_k >= 1, f"--top-k {top_k} must be at least 1", "pass e.g. --top-k 5 (the most probable classes to show)")


def _stored(image: ImageLike, img_size: int) -> np.ndarray:
    """The pixels the data cache would store for ``image`` (decoded the same way), at the side its eval crop needs."""
    if isinstance(image, Image.Image):
        return stored_pixels(image, storage_side(image.size, img_size))
    try:
        with Image.open(image) as img:
            return stored_pixels(img, storage_side(img.size, img_size))
    except UNREADABLE as exc:
        raise UnreadableImage(image, exc) from None


def image_files(paths: list[str]) -> list[str]:
    """The files named, with each folder replaced by the images under it (sorted; the extensions ImageFolder
    reads, nothing hidden: see ``datasets/listing.py``)."""
    files: list[str] = []
    for path in paths:
        if not Path(path).is_dir():
            files.append(path)
            continue
        found = [str(f) for f in image_files_under(Path(path))]
        if not found:
            raise UserError(f"folder {path} has no image files ({', '.join(IMG_EXTENSIONS)})",
                            "pass image files or a folder that holds some")
        files += found
    return files


def predict(src: str, images: list[str], top_k: int = 5, backend: str | None = None,
            batch_size: int = PREDICT_BATCH_SIZE) -> list[dict[str, Any]]:
    """``vitcompress predict``: one ``{"image", "top"}`` record per image file (folders expanded).

    Unreadable images are skipped with a warning on stderr and an ``{"image", "error"}`` record, as training
    skips them; only when no image can be read is it an error (naming the first, with PIL's reason).
    """
    check_top_k(top_k)
    files = image_files(images)
    with Classifier(src, backend, batch_size=batch_size) as classifier:
        if top_k > len(classifier.classes):
            print(f"note: --top-k {top_k} is more than the model's {len(classifier.classes)} classes; showing all of them",
                  file=sys.stderr)
        probs, unreadable = classifier.readable_probabilities(files)
    if unreadable:
        first = min(unreadable)
        if len(unreadable) == len(files):
            raise unreadable[first]
        print(f"warning: skipped {len(unreadable)} unreadable image(s) (first: {files[first]})", file=sys.stderr)
    return [{"image": file, "error": f"cannot be read as an image ({unreadable[index].reason}): skipped"}
            if index in unreadable else
            {"image": file, "top": [{"class": c, "probability": round(p, 6)} for c, p in classifier.top_classes(row, top_k)]}
            for index, (file, row) in enumerate(zip(files, probs, strict=True))]
