"""What the index tests share (test_index_plan.py, test_hnsw.py): one faiss thread, and memory measurement."""

from __future__ import annotations

import ctypes
import ctypes.util

import faiss
import pytest


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """faiss's OpenMP threads spin on an oversubscribed machine (training 8x slower on 2 busy cores)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def heap_in_use():
    """Bytes glibc malloc has handed out (None elsewhere): what a loaded index really takes,
    hash-map nodes included, which RSS blurs with freed pages."""
    try:
        info = ctypes.CDLL(ctypes.util.find_library("c")).mallinfo2
    except (OSError, AttributeError, TypeError):
        return None

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
        ]

    info.restype = MallInfo2
    got = info()
    return got.uordblks + got.hblkhd
