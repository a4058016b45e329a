"""Metrix: deep metric learning with mixup ("It Takes Two to Tango", ICLR 2022) for image retrieval.

Heavy imports (torch and friends) stay in the submodules, so `import metrix` and `metrix --help`
are fast.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("metrix")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"


def __getattr__(name: str):
    # `from metrix import Index`: the Python API for searching an index, imported on first use so
    # that `import metrix` stays light (index/python_api.py).
    if name in ("Index", "Result"):
        from metrix.index import python_api

        return getattr(python_api, name)
    raise AttributeError(f"module 'metrix' has no attribute {name!r}")
