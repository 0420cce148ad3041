"""The one exception type for mistakes a user can make and fix.

The CLI prints ``error: <problem>; <fix>`` on one line and exits with status 2 for these; every
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno


class UserError(Exception):
    """A problem with the user's input, with the fix in the message.

    Args:
        problem: What is wrong, naming the offending value or path.
        fix: What the user should do instead.
    """

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}; {fix}" if fix else problem)


def require(condition: bool, problem: str, fix: str = "") -> None:
    """Raise :class:`UserError` unless ``condition`` holds."""
    if not condition:
        raise UserError(problem, fix)


FULL_DISK = (errno.ENOSPC, errno.EDQUOT)  # the errnos of a disk (or quota) with no room left
_DENIED = (errno.EROFS, errno.EACCES, errno.EPERM)


def storage_error(exc: OSError) -> UserError | None:
    """A full disk, or a path the user may not write (or read): the user's machine, not a bug, so one line that
    names the place (``None`` for any other ``OSError``, which keeps its traceback)."""
    if exc.errno in FULL_DISK:
        return UserError(f"no space left for {exc.filename or 'a file being written'} ({exc.strerror})",
                         "free space there, or point --out (or --cache-dir, for data) at another disk")
    if exc.errno in _DENIED and exc.filename:
        return UserError(f"cannot use {exc.filename} ({exc.strerror})",
                         "check its permissions, or choose an --out (or --cache-dir) you can write")
    return None


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's CUDA out-of-memory error, or a runtime's (ONNX Runtime's and TensorRT's say so in their message)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    message = str(exc).lower()
    return "out of memory" in message or "failed to allocate memory" in message
