"""numba settings decided in one place.

Kernels are compiled with ``cache=True`` so tests and the CLI do not recompile every run, and never
with ``fastmath``: coder arithmetic must be bit-exact and identical across processes. Bounds checks
are left off for speed, so every kernel that reads untrusted bytes checks its own indices.
"""

from numba import njit

jit = njit(cache=True, nogil=True, fastmath=False, error_model="numpy")

#: For the small coder primitives called once per bin: inlined at numba IR level into the kernels.
jit_inline = njit(cache=True, nogil=True, fastmath=False, error_model="numpy", inline="always")
