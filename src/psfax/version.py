"""psfax's version string, read once from the installed package's metadata (the one place it is defined)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("psfax")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"


def psfax_version() -> str:
    """The psfax version (``0.0.0+unknown`` when running from a bare source tree)."""
    return __version__
