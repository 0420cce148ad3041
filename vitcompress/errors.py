"""The one exception type for mistakes a user can make and fix.

The CLI prints ``error: <problem>; <fix>`` on one line and exits with status 2 for these; every
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


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
