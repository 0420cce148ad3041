"""The shape every runtime has: ``unavailable(source)`` says why it cannot run that model here (``None`` when it
can), the constructor loads it, and ``run(batch)`` maps the model's input (see :meth:`ModelSource.prepare`) to logits."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from vitcompress.sources import ModelSource


class Runtime(ABC):
    name: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]]  # the ModelSource kinds it runs
    device: str = "cpu"
    max_batch: int | None = None  # the largest batch it takes where it has a limit of its own (a Triton server's)

    @classmethod
    def unavailable(cls, source: ModelSource) -> str | None:
        if source.kind not in cls.kinds:
            return f"runs {' or '.join(cls.kinds)} models, not {source.kind}"
        return cls._missing()

    @classmethod
    def nothing_to_run(cls) -> str:
        """Why a backend that was asked for measured nothing: it cannot run here, or no input is a model it runs."""
        return cls._missing() or f"runs {' or '.join(cls.kinds)} models, and none of the inputs is one"

    @classmethod
    def _missing(cls) -> str | None:
        return None

    @abstractmethod
    def __init__(self, source: ModelSource, threads: int | None = None, max_batch: int | None = None) -> None:
        """Load ``source``. ``max_batch`` is the largest batch the caller will send: a runtime that is sized for
        its batches (the Triton server's dynamic batcher) is sized for it; the others take any batch."""

    def batch_limit(self, source: ModelSource, wanted: int) -> int:
        """``wanted``, capped by what the model file takes (an engine's profile) and by this runtime's own limit."""
        limit = source.batch_limit(wanted)
        return min(limit, self.max_batch) if self.max_batch else limit

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None:  # noqa: B027 (most runtimes hold nothing to release)
        """Release what the runtime holds (a server, a GPU context)."""

    def memory_bytes(self) -> int | None:
        """Peak device memory since loading, where the runtime can tell (CUDA); ``None`` on CPUs."""
        return None

    def server_rss_bytes(self) -> int | None:
        """Peak RSS of the processes that serve the model besides this one (a Triton server's); ``None`` if none."""
        return None

    def precision(self, source: ModelSource) -> str:
        """The arithmetic it runs the model in (the model's own, unless the runtime changes it)."""
        return source.precision
