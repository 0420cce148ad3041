"""Check an exported ONNX model against the PyTorch model it came from, on real images.

The images are a seeded sample of a dataset's test split (``--verify-data``; by default the data
the artifact was trained on, when it can be loaded here), else generated pixels. Both models see the
same uint8 pixels; the report holds the largest logit difference, top-1 agreement and accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitcompress.artifact import ArtifactMeta
from vitcompress.augment import BatchTransform
from vitcompress.data import DataOptions, generated_pixels, streamed_before, test_sample
from vitcompress.datasets.torchvision_catalog import data_dir_for
from vitcompress.errors import UserError
from vitcompress.export.onnx_runtime import ort_runner, ort_session, run_in_batches
from vitcompress.loader import read_all

VERIFY_BATCH = 7  # an odd size, so the dynamic batch axis is exercised beyond 1 and powers of two


@dataclass(frozen=True)
class Tolerance:
    """What a verification must meet: logits within ``max_error`` of PyTorch's (relative to the largest
    logit; ``None``: not checked) and at least ``min_agreement`` of the top-1 predictions the same."""

    max_error: float | None
    min_agreement: float


# INT8: ONNX Runtime's integer kernels round differently from PyTorch's fake quantization, and its
# attention matmuls stay in full precision, so only the predictions are compared.
TOLERANCES = {"fp32": Tolerance(1e-3, 0.99), "fp16": Tolerance(3e-2, 0.98), "int8": Tolerance(None, 0.95)}
# Token merging picks which tokens merge by comparing similarities: where two candidates tie within rounding, the
# export may merge the other one and move that image's logits past FP32's tolerance (seen: 2.3e-3 of the largest
# logit, a CIFAR-10 model merging 4 tokens a block). A merged FP32 export is held to FP16's error, FP32's agreement.
MERGED_FP32 = Tolerance(3e-2, 0.99)


def tolerance_for(precision: str, meta: ArtifactMeta) -> Tolerance:
    """What an export of ``meta``'s model in ``precision`` must meet against PyTorch."""
    return MERGED_FP32 if precision == "fp32" and meta.merging else TOLERANCES[precision]


@dataclass
class VerificationSet:
    pixels: torch.Tensor  # uint8 N x H x W x 3 at the model's input size
    labels: torch.Tensor | None
    source: str


def verification_set(meta: ArtifactMeta, spec: str | None, size: int, data_dir: str | None = None,
                     cache_dir: str | None = None, quiet: bool = True) -> VerificationSet:
    """``size`` test images of ``spec`` (or of the artifact's own data, or generated when that is not here)."""
    explicit = spec is not None
    spec = spec or meta.data.get("spec")
    if spec:
        try:
            options = DataOptions(spec=spec, data_dir=data_dir_for(spec, data_dir, meta.data), img_size=meta.img_size,
                                  val_split=0.0, cache_dir=cache_dir, quiet=quiet, expected_classes=meta.classes,
                                  stream=streamed_before(spec, meta.data), trained_on=meta.data)
            test = test_sample(options, size)
        except UserError:
            if explicit:
                raise
        else:
            pixels, labels = read_all(test)
            pixels = BatchTransform(meta.img_size, meta.mean, meta.std).eval_pixels(pixels)
            return VerificationSet(pixels, labels, f"{spec} (test split, {len(labels)} images)")
    return VerificationSet(generated_pixels(size, meta.img_size), None, f"generated pixels ({size} images)")


@torch.no_grad()
def torch_logits(model: nn.Module, meta: ArtifactMeta, pixels: torch.Tensor, batch: int = 64) -> np.ndarray:
    transform = BatchTransform(meta.img_size, meta.mean, meta.std)
    model = model.eval().cpu()
    return torch.cat([model(transform.eval(chunk)).float() for chunk in pixels.split(batch)]).numpy()


def verify_onnx(path: Path, model: nn.Module, meta: ArtifactMeta, data: VerificationSet, takes_pixels: bool,
                tolerance: Tolerance) -> dict[str, Any]:
    """Compare ONNX Runtime on ``path`` with PyTorch on ``data``; raise ``UserError`` when it fails ``tolerance``."""
    report = verify_runner(ort_runner(ort_session(path)), model, meta, data, takes_pixels, tolerance)
    if not report["passed"]:
        raise UserError(f"verification failed: {report['failure']}; nothing was written",
                        "re-run with --debug and report it; --precision fp32 or --target standard may export it")
    return report


def verify_runner(run: Callable[[np.ndarray], np.ndarray], model: nn.Module, meta: ArtifactMeta, data: VerificationSet,
                  takes_pixels: bool, tolerance: Tolerance) -> dict[str, Any]:
    """``run`` (an exported model in its runtime) against PyTorch on ``data``, alone and in batches: the report
    (:func:`compare`'s, with the images and the batch sizes); ``report["passed"]`` says whether it held."""
    expected = torch_logits(model, meta, data.pixels)
    inputs = BatchTransform(meta.img_size, meta.mean, meta.std).model_input(data.pixels, takes_pixels)
    single = run_in_batches(run, inputs[:1], 1)
    got = run_in_batches(run, inputs, VERIFY_BATCH)
    report = compare(expected, got, data.labels, tolerance)
    report.update(images=len(inputs), source=data.source, batch_sizes=[1, VERIFY_BATCH],
                  batch1_max_abs_error=float(np.abs(single - got[:1]).max()))
    return report


def compare(expected: np.ndarray, got: np.ndarray, labels: torch.Tensor | None, tolerance: Tolerance) -> dict[str, Any]:
    """Max abs error, top-1 agreement and accuracies of ``got`` against ``expected``, and whether they pass."""
    error = float(np.abs(expected - got).max())
    scale = max(1.0, float(np.abs(expected).max()))
    agreement = float((expected.argmax(1) == got.argmax(1)).mean())
    report: dict[str, Any] = {"max_abs_error": error, "max_abs_logit": float(np.abs(expected).max()),
                              "top1_agreement": agreement, "tolerance": asdict(tolerance)}
    if labels is not None:
        truth = labels.numpy()
        report["accuracy_onnx"] = float((got.argmax(1) == truth).mean())
        report["accuracy_torch"] = float((expected.argmax(1) == truth).mean())
    failures = []
    if not np.isfinite(got).all():
        failures.append("ONNX Runtime returned NaN or inf")
    if tolerance.max_error is not None and error > tolerance.max_error * scale:
        failures.append(f"max abs error {error:.3g} > {tolerance.max_error * scale:.3g}")
    if agreement < tolerance.min_agreement:
        failures.append(f"top-1 agreement {agreement:.3f} < {tolerance.min_agreement}")
    report["passed"] = not failures
    report["failure"] = "; ".join(failures) or None
    return report
