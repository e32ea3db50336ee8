"""numba settings decided in one place.

Kernels are compiled with numba's on-disk cache so tests and the CLI do not recompile every run,
and never with ``fastmath``: coder arithmetic must be bit-exact and identical across processes.
Bounds checks are left off for speed, so every kernel that reads untrusted bytes checks its own
indices.

The cache files are read and written under an exclusive file lock (:func:`_cache_lock`; POSIX
only). numba's own cache lets two processes that compile two signatures of one kernel at the same
time pair one's index entry with the other's machine code (numba issues 4807 and 10128); every run
that loads the entry afterwards fails (``'descr' is NULL``) or computes with the wrong code, until
the cache files are deleted. Flower's simulation starts several client actors at once, each
compiling on its first round; seen here with two processes sharing a source tree.
"""

import contextlib
import os
import warnings

from numba import config, njit
from numba.core.caching import FunctionCache, IndexDataCacheFile

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: numba's cache without the lock
    fcntl = None

#: The lock file, one per cache directory (numba's ``__pycache__`` beside the module by default).
LOCK_NAME = "nnc_fl-numba-cache.lock"

_OPTIONS = dict(nogil=True, fastmath=False, error_model="numpy")


@contextlib.contextmanager
def _cache_lock(directory: str):
    """Hold an exclusive lock on ``directory``'s :data:`LOCK_NAME` (created if need be) for the
    block; without ``fcntl``, or where the file cannot be opened (a read-only install, whose cache
    numba will not write either), the block runs unlocked."""
    fd = None
    if fcntl is not None:
        try:
            os.makedirs(directory, exist_ok=True)
            fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            fd = None
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # (releases the lock)


class _LockedIndexDataCacheFile(IndexDataCacheFile):  # pragma: no cover - JIT on only (tests/test_jit_cache.py)
    """numba's index + data files of one function, each save and load under :func:`_cache_lock`."""

    def save(self, key, data):
        with _cache_lock(self._cache_path):
            super().save(key, data)

    def load(self, key):
        with _cache_lock(self._cache_path):
            return super().load(key)


class _LockedFunctionCache(FunctionCache):  # pragma: no cover - JIT on only (tests/test_jit_cache.py)
    """What ``cache=True`` gives a dispatcher, with the files of :class:`_LockedIndexDataCacheFile`."""

    def __init__(self, py_func):
        super().__init__(py_func)
        self._cache_file = _LockedIndexDataCacheFile(
            cache_path=self._cache_path,
            filename_base=self._impl.filename_base,
            source_stamp=self._impl.locator.get_source_stamp(),
        )


def _compiler(**options):
    """A decorator: ``njit`` with :data:`_OPTIONS` and ``options``, cached through the lock."""
    compile_ = njit(cache=False, **_OPTIONS, **options)

    def decorate(fn):
        kernel = compile_(fn)
        if not config.DISABLE_JIT:  # pragma: no cover - JIT on only (with it off, fn itself)
            try:  # what enable_caching() does, with the lock (numba internals: guarded)
                kernel._cache = _LockedFunctionCache(kernel.py_func)
            except (AttributeError, TypeError) as exc:  # a numba whose cache classes differ: unlocked
                warnings.warn(f"nnc_fl: numba's kernel cache without the file lock ({exc!r})", RuntimeWarning,
                              stacklevel=2)
                kernel.enable_caching()
        return kernel

    return decorate


jit = _compiler()

#: For the small coder primitives called once per bin: inlined at numba IR level into the kernels.
jit_inline = _compiler(inline="always")
