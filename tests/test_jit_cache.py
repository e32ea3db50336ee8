"""numba's on-disk cache of the kernels, read and written under a file lock (nnc_fl._jit)."""

import os
import subprocess
import sys
import textwrap
import time

import pytest
from numba import config

from nnc_fl import _dq, _jit, _levels

jit_on = pytest.mark.skipif(config.DISABLE_JIT, reason="numba's cache exists only with the JIT on")

_KERNEL = '''
from nnc_fl._jit import jit

@jit
def twice(x):
    return 2 * x
'''


def _run(code: str, cwd) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(cwd), *sys.path]))
    env.pop("NUMBA_CACHE_DIR", None)  # the cache beside the module, in cwd
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


@jit_on
def test_kernels_are_cached_through_the_lock():
    for kernel in (_dq.encode_levels_dq, _levels.decode_values, _levels._gt_context):
        assert isinstance(kernel._cache, _jit._LockedFunctionCache)
        assert isinstance(kernel._cache._cache_file, _jit._LockedIndexDataCacheFile)


@jit_on
def test_a_kernel_compiled_by_one_process_is_loaded_by_the_next(tmp_path):
    (tmp_path / "kmod.py").write_text(_KERNEL)
    code = """
        import kmod
        assert kmod.twice(3) == 6 and kmod.twice(1.5) == 3.0
        s = kmod.twice.stats
        print(sum(s.cache_hits.values()), sum(s.cache_misses.values()))
    """
    assert _run(code, tmp_path).split() == ["0", "2"]  # compiled, saved
    assert (tmp_path / "__pycache__" / _jit.LOCK_NAME).exists()
    assert _run(code, tmp_path).split() == ["2", "0"]  # loaded


_RACER = """
import pathlib, sys, time
from numba.core import caching

role, arg, meet = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
other = meet / ("B" if role == "A" else "A")
save_index, save_data = caching.IndexDataCacheFile._save_index, caching.IndexDataCacheFile._save_data


def slow_save_index(self, overloads):  # both processes meet here (3 s at most), B writes its index last
    if self._index_name.startswith("kmod.twice"):
        (meet / role).touch()
        deadline = time.monotonic() + 3
        while not other.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5 if role == "B" else 0.0)
    save_index(self, overloads)


def slow_save_data(self, name, data):  # ... and A its machine code
    time.sleep(1.0 if role == "A" else 0.0)
    save_data(self, name, data)


caching.IndexDataCacheFile._save_index = slow_save_index
caching.IndexDataCacheFile._save_data = slow_save_data
import kmod
assert kmod.twice(eval(arg)) == 2 * eval(arg)
"""


@jit_on
def test_processes_compiling_two_signatures_at_once_leave_a_cache_others_load(tmp_path):
    # Process A compiles twice(int), B twice(float) at the same time, timed so that, unlocked, the
    # cache ends with B's index entry naming A's machine code (numba issue 4807): a third process
    # then runs twice(1.5) with the int code. Under the lock the two saves take turns.
    (tmp_path / "kmod.py").write_text(_KERNEL)
    (tmp_path / "racer.py").write_text(_RACER)
    meet = tmp_path / "meet"
    meet.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    env.pop("NUMBA_CACHE_DIR", None)
    procs = [subprocess.Popen([sys.executable, "racer.py", role, arg, str(meet)], cwd=tmp_path, env=env,
                              stderr=subprocess.PIPE, text=True) for role, arg in (("A", "3"), ("B", "1.5"))]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    out = _run("""
        import kmod
        print(kmod.twice(1.5), kmod.twice(3), sum(kmod.twice.stats.cache_misses.values()))
    """, tmp_path)
    assert out.split() == ["3.0", "6", "0"]  # both loaded from the cache, each with its own code


@jit_on
def test_a_numba_with_other_cache_internals_gets_its_own_cache_and_a_warning(monkeypatch):
    def broken(py_func):
        raise TypeError("IndexDataCacheFile() got an unexpected keyword argument")

    monkeypatch.setattr(_jit, "_LockedFunctionCache", broken)
    with pytest.warns(RuntimeWarning, match="without the file lock"):
        kernel = _jit.jit(lambda_free_twice)
    assert type(kernel._cache).__name__ == "FunctionCache" and kernel(4) == 8


def lambda_free_twice(x):  # (a module-level function: numba caches only those)
    return 2 * x


def test_cache_lock_excludes_another_process(tmp_path):
    ready = tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import pathlib, time
        from nnc_fl._jit import _cache_lock
        with _cache_lock({str(tmp_path)!r}):
            pathlib.Path({str(ready)!r}).touch()
            time.sleep(1.5)
    """)], env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        t0 = time.monotonic()
        with _jit._cache_lock(str(tmp_path)):
            waited = time.monotonic() - t0
    finally:
        assert holder.wait(timeout=120) == 0
    assert waited > 0.5  # it waited for the holder to let go
    assert (tmp_path / _jit.LOCK_NAME).exists()


def test_cache_lock_runs_the_block_where_no_lock_file_can_be_made(tmp_path):
    (tmp_path / "file").write_text("")
    ran = []
    with _jit._cache_lock(str(tmp_path / "file" / "cache")):  # a directory under a file: OSError
        ran.append(True)
    assert ran == [True]
