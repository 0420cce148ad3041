"""The export stage (installed as ``vitcompress.export``): ``vitcompress.export.export(ExportConfig(...))``."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:  # imported on first use, like the top-level API
    if name == "export":
        from vitcompress.export.exporter import export

        return export
    raise AttributeError(f"module 'vitcompress.export' has no attribute {name!r}")
