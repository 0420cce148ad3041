"""vitcompress: fine-tune, prune, quantize, export and benchmark Vision Transformers.

Every stage is a function over an *artifact* directory (see :mod:`vitcompress.artifact`);
the ``vitcompress`` command line is a thin layer over these functions::

    import vitcompress
    result = vitcompress.finetune(vitcompress.FinetuneConfig(model="vit_tiny_patch16_224", data="shapes",
                                                              out="runs/tiny", img_size=32, patch_size=8))
    model, meta = vitcompress.load_model(result.path)

``vitcompress.export`` is the export subpackage; its stage function is ``vitcompress.export.export``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Imported on first use, so `vitcompress --help` does not pay for torch and timm.
_API = {
    "finetune": "vitcompress.compress.finetune",
    "prune": "vitcompress.compress.prune",
    "merge": "vitcompress.compress.merge",
    "qat": "vitcompress.compress.qat",
    "ExportConfig": "vitcompress.config",
    "FinetuneConfig": "vitcompress.config",
    "PruneConfig": "vitcompress.config",
    "MergeConfig": "vitcompress.config",
    "QatConfig": "vitcompress.config",
    "DistillOptions": "vitcompress.config",
    "SourceData": "vitcompress.config",
    "TrainConfig": "vitcompress.config",
    "AugmentOptions": "vitcompress.config",
    "load_model": "vitcompress.artifact",
    "read_meta": "vitcompress.artifact",
    "evaluate_artifact": "vitcompress.evaluate",
    "UserError": "vitcompress.errors",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'vitcompress' has no attribute {name!r}")
