"""Exceptions raised by psfax.

Every error caused by what a user passed in is a :class:`PsfaxError`; the
classes also subclass the matching built-in (``ValueError``, ``TypeError``,
``FileNotFoundError``) so ordinary ``except`` clauses keep working.  Messages
name the file or parameter and the bad value.  The CLI prints them as one line
and exits non-zero.  Per-star trouble in a fit is never an exception: it is a
flag in the result table.
"""


class PsfaxError(Exception):
    """Base class of every error psfax raises on purpose."""


class InputError(PsfaxError, ValueError):
    """An argument or array has a bad value or shape."""


class InputTypeError(PsfaxError, TypeError):
    """An argument has the wrong type."""


class BadFileError(PsfaxError, ValueError):
    """A file exists but cannot be used (not FITS, truncated, wrong content)."""


class MissingFileError(PsfaxError, FileNotFoundError):
    """A file that was asked for does not exist."""


class NoStarsError(PsfaxError, ValueError):
    """No star is left to fit after the selection cuts."""
