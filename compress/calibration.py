"""Calibration methods by name: how each activation quantizer's range (amax) is chosen from data.

``max`` keeps the largest absolute value seen; the histogram methods (modelopt's
``HistogramCalibrator``) choose a range that clips outliers: ``entropy`` minimises the KL divergence
between the float and quantized distributions (TensorRT's classic method), ``percentile`` keeps the
given percentile of absolute values, ``mse`` minimises the quantization's mean squared error.
Weights are always calibrated per output channel with ``max``. A new method is one class here.
"""

from __future__ import annotations

from typing import Any

import torch


class Calibration:
    """Which modelopt calibrator collects statistics, and how amax is computed from them."""

    calibrator = "max"

    def load_amax(self, quantizer: Any, percentile: float) -> None:
        quantizer.load_calib_amax()


class MaxCalibration(Calibration):
    pass


class HistogramCalibration(Calibration):
    """Activations from modelopt's histogram; weights (max calibrator, per channel) keep their max."""

    calibrator = "histogram"
    method = ""

    def load_amax(self, quantizer: Any, percentile: float) -> None:
        if quantizer._calibrator.__class__.__name__ == "HistogramCalibrator":
            self.load_histogram_amax(quantizer, percentile)
        else:
            quantizer.load_calib_amax()

    def load_histogram_amax(self, quantizer: Any, percentile: float) -> None:
        quantizer.load_calib_amax(self.method)


class EntropyCalibration(HistogramCalibration):
    method = "entropy"


class PercentileCalibration(HistogramCalibration):
    method = "percentile"

    def load_histogram_amax(self, quantizer: Any, percentile: float) -> None:
        quantizer.load_calib_amax("percentile", percentile=percentile)


class MseCalibration(HistogramCalibration):
    """The range with the least mean squared quantization error over the collected histogram.

    Computed here: modelopt 0.47's own ``mse`` passes ``num_bits`` where its fake-quant function takes
    ``bias``, so on every device it returns the smallest candidate range (top-1 falls to chance).
    """

    method = "mse"

    def load_histogram_amax(self, quantizer: Any, percentile: float) -> None:
        calibrator = quantizer._calibrator
        counts = torch.as_tensor(calibrator._calib_hist)
        # On a GPU modelopt keeps the counts where the activations were but makes the bin edges on the CPU:
        # the search runs on the CPU (a few thousand bins), and amax goes where the activations are.
        amax = mse_amax(counts.float().cpu(), torch.as_tensor(calibrator._calib_bin_edges).float().cpu(), quantizer.num_bits)
        quantizer.amax = amax.to(counts.device)


def mse_amax(counts: torch.Tensor, edges: torch.Tensor, num_bits: int, start_bin: int = 128) -> torch.Tensor:
    """The bin centre that, as a symmetric INT range, minimises the histogram-weighted squared error."""
    centers = (edges[1:] + edges[:-1]) / 2
    candidates = centers[start_bin:] if len(centers) > start_bin else centers
    bound = 2 ** (num_bits - 1) - 1
    scale = bound / candidates[:, None]  # candidates x bins
    quantized = torch.clamp(torch.round(centers[None, :] * scale), -bound - 1, bound) / scale
    errors = ((quantized - centers[None, :]) ** 2 * counts[None, :]).sum(1)
    return candidates[int(torch.argmin(errors))].clone()


CALIBRATIONS: dict[str, type[Calibration]] = {
    "max": MaxCalibration,
    "entropy": EntropyCalibration,
    "percentile": PercentileCalibration,
    "mse": MseCalibration,
}
