"""Datasets: the paper's four benchmarks, any ImageFolder, and a built-in synthetic set."""

from .base import DataError, RetrievalData, Sample, Split
from .benchmarks import BENCHMARKS, load_benchmark
from .folder import load_data, load_image_folder

__all__ = ["BENCHMARKS", "DataError", "RetrievalData", "Sample", "Split", "load_benchmark", "load_data", "load_image_folder"]
