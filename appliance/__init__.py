"""tillbox appliance: the daemon and its domain (catalog, sales, tax, ledger)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tillbox")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
