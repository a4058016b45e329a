import os
import tempfile

import torch


def pytest_configure(config):
    # Generated data and cached stage outputs go to a throwaway folder, not the user's cache.
    if "METRIX_CACHE" not in os.environ:
        os.environ["METRIX_CACHE"] = tempfile.mkdtemp(prefix="metrix-test-cache-")


def make_labels(layout: str, n: int, generator: torch.Generator) -> torch.Tensor:
    """Class layouts the losses must handle: balanced P x K, random (with singletons),
    all-distinct (no positive pairs) and single-class (no negative pairs)."""
    if layout == "balanced":
        k = 4 if n % 4 == 0 else 2
        return (torch.arange(n) // k)[torch.randperm(n, generator=generator)]
    if layout == "random":
        return torch.randint(0, max(2, n // 3), (n,), generator=generator)
    if layout == "distinct":
        return torch.randperm(n, generator=generator)
    if layout == "single":
        return torch.zeros(n, dtype=torch.long)
    raise ValueError(layout)
