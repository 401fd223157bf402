"""One error hierarchy: everything autogradlens refuses derives from :class:`LensError` and from the matching
built-in, so both ``except lens.LensError`` and ``except ValueError`` work.

Example:
    >>> import autogradlens as lens
    >>> from autogradlens.errors import LensValueError
    >>> e = LensValueError("mode must be 'auto', 'scalar' or 'tensor'")
    >>> isinstance(e, lens.LensError), isinstance(e, ValueError)
    (True, True)
"""

from __future__ import annotations

__all__ = ["LensError", "LensRuntimeError", "LensTypeError", "LensValueError"]


class LensError(Exception):
    """Base of every error autogradlens raises on bad input or an impossible request."""


class LensTypeError(LensError, TypeError):
    """An argument of the wrong type."""


class LensValueError(LensError, ValueError):
    """An argument of the right type with a wrong value (also: a damaged file)."""


class LensRuntimeError(LensError, RuntimeError):
    """A request that cannot be carried out in the current state."""
