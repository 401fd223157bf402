"""One error hierarchy: everything autogradlens refuses derives from :class:`LensError` and from the matching
built-in, so both ``except lens.LensError`` and ``except ValueError`` work::

    LensError
    ├── LensTypeError(TypeError)                   an argument of the wrong type
    ├── LensValueError(ValueError)                 a wrong value, a damaged file
    ├── LensFileNotFoundError(FileNotFoundError)   a file or folder that is not there
    └── LensRuntimeError(RuntimeError)             a request impossible in the current state

Example:
    >>> import autogradlens as lens
    >>> from autogradlens.errors import LensValueError
    >>> e = LensValueError("mode must be 'auto', 'scalar' or 'tensor'")
    >>> isinstance(e, lens.LensError), isinstance(e, ValueError)
    (True, True)
"""

from __future__ import annotations

__all__ = ["LensError", "LensFileNotFoundError", "LensRuntimeError", "LensTypeError", "LensValueError"]


class LensError(Exception):
    """Base of every error autogradlens raises on bad input or an impossible request."""


class LensTypeError(LensError, TypeError):
    """An argument of the wrong type."""


class LensValueError(LensError, ValueError):
    """An argument of the right type with a wrong value (also: a damaged file)."""


class LensFileNotFoundError(LensError, FileNotFoundError):
    """A file or folder the caller named does not exist."""


class LensRuntimeError(LensError, RuntimeError):
    """A request that cannot be carried out in the current state."""
