"""Datasets: the paper's four benchmarks, any ImageFolder, and a built-in synthetic set."""

from .base import DataError, RetrievalData, Sample, Split
from .benchmarks import BENCHMARKS, load_benchmark
from .folder import load_data, load_image_folder
from .unlabelled import load_unlabelled

__all__ = [
    "BENCHMARKS",
    "DataError",
    "RetrievalData",
    "Sample",
    "Split",
    "load_benchmark",
    "load_data",
    "load_image_folder",
    "load_unlabelled",
]
