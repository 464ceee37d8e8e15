"""Per-thread scratch arrays: one array a name and thread, kept while its shape holds, never a
large one."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from anon_ray.arrays import KEEP_BYTES, scratch


def test_each_thread_keeps_its_own_array_while_the_shape_holds():
    a = scratch("test.a", (4, 6, 3), np.uint8)
    assert scratch("test.a", (4, 6, 3), np.uint8) is a
    assert scratch("test.b", (4, 6, 3), np.uint8) is not a
    with ThreadPoolExecutor(1) as other:
        assert other.submit(scratch, "test.a", (4, 6, 3), np.uint8).result() is not a
    b = scratch("test.a", (4, 6, 2), np.uint8)
    assert b is not a and b.shape == (4, 6, 2)
    assert scratch("test.a", (4, 6, 2), np.int32).dtype == np.int32


def test_large_arrays_are_never_kept():
    shape = (KEEP_BYTES // 4 + 1,)
    assert scratch("test.large", shape, np.int32) is not scratch("test.large", shape, np.int32)
    shape = (KEEP_BYTES // 4,)
    assert scratch("test.large", shape, np.int32) is scratch("test.large", shape, np.int32)
