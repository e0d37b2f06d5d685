"""Keep the C allocator from handing large tensors back to the OS between inference calls.

glibc serves each allocation above its mmap threshold (adaptive, at most 32 MiB) with a fresh ``mmap`` and
unmaps it on ``free``, so every such activation is page-faulted and zero-filled again on every call. Only
tensors above the threshold pay, and more of them cross it as the input grows, so latency grows faster than
the pixel count: on this project's 2-core CPU the PLK student was 1.8x slower at 512 px and 2.7x slower at
1024 px than with the heap retained, and its latency ratio 1024/512 was 5.7 instead of 3.9
(``benchmarks/results/scaling.json``, written by ``benchmarks/scaling.py``, which measures both). jemalloc or tcmalloc under
``LD_PRELOAD`` fix it the same way; ``mallopt`` does it from inside the process with nothing to install.
The price is resident memory: the heap keeps its high-water mark, as ONNX Runtime's arena does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1  # from glibc's <malloc.h>
M_MMAP_MAX = -4
# bytes of free heap top tolerated before it is returned to the OS (mallopt takes an int)
NEVER_TRIM = 2**31 - 1


def retain_freed_memory() -> bool:
    """Serve every allocation from the heap and never trim it; False (and nothing done) where libc is not glibc.

    Process-wide and permanent for allocations made after the call: make it once, early in an inference process.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
