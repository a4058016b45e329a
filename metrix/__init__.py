"""Metrix: deep metric learning with mixup ("It Takes Two to Tango", ICLR 2022) for image retrieval.

Heavy imports (torch and friends) stay in the submodules, so `import metrix` and `metrix --help`
are fast.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("metrix")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
