"""A crash while writing never leaves half a file: a process killed in the middle of an atomic write keeps the old
file (and only a hidden temporary beside it), and the text-embedding cache survives a crash mid-write or before the
rename, computing again instead of taking half an entry for a hit. The crashes are real process exits
(tests/faults.py); the other faults are in test_faults.py."""

from __future__ import annotations

import numpy as np
import pytest

import faults
from clip_rt import zeroshot


# -- crashes while writing --------------------------------------------------------------------------------------------
HALF_WRITE = """
import os
_real_fdopen = os.fdopen
class _HalfWriter:
    def __init__(self, f):
        self.f = f
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return False
    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        os._exit(77)  # killed in the middle of writing the bytes
def _fdopen(fd, *a, **k):
    return _HalfWriter(_real_fdopen(fd, *a, **k))
os.fdopen = _fdopen
"""


def test_crash_in_the_middle_of_a_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old content " * 1000)
    code = HALF_WRITE + f"from clip_rt.fsutil import atomic_write_bytes\natomic_write_bytes({str(target)!r}, b'N' * 10**6)\n"
    proc = faults.run_crashing(code, None)
    assert proc.returncode == faults.CRASH_EXIT, proc.stderr
    assert target.read_bytes() == b"old content " * 1000
    leftovers = [p for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".data.bin.") and leftovers[0].stat().st_size == 500_000


CLASSIFY_IN_CHILD = """
import clip_rt
from clip_rt.zeroshot import ZeroShotClassifier
clf = ZeroShotClassifier(clip_rt.load({pkg!r}), ["cat", "dog", "car"], templates="simple")
print(clf.cache_status)
"""


@pytest.mark.parametrize("crash", ["half_write", "before_rename"])
def test_text_embedding_cache_survives_a_crash_while_writing(model, tiny_package, cache, crash):
    code = CLASSIFY_IN_CHILD.format(pkg=str(tiny_package))
    if crash == "half_write":
        proc = faults.run_crashing(HALF_WRITE + code, None, env={"CLIP_RT_CACHE": str(cache)})
    else:
        proc = faults.run_crashing(code, ("os", "replace", 1), env={"CLIP_RT_CACHE": str(cache)})
    assert proc.returncode == faults.CRASH_EXIT, proc.stderr
    entries = list((cache / "text-embeddings").iterdir())
    assert len(entries) == 1 and entries[0].name.startswith(".") and entries[0].name.endswith(".tmp"), entries
    clf = zeroshot.ZeroShotClassifier(model, ["cat", "dog", "car"], templates="simple")
    assert clf.cache_status == "computed"  # nothing half-written was taken for a cache hit
    zeroshot.clear_memory_cache()
    again = zeroshot.ZeroShotClassifier(model, ["cat", "dog", "car"], templates="simple")
    assert again.cache_status == "disk" and np.array_equal(again.text_embeddings, clf.text_embeddings)
