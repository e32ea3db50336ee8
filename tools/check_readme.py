#!/usr/bin/env python3
"""Run the README's marked shell blocks verbatim in a fresh clone and report pass/fail per block.

A block is marked by an HTML comment on the line before its fence::

    <!-- readme-check: NAME -->
    ```bash
    ...
    ```

The script clones the repository's committed ``HEAD`` into a temporary folder, creates a fresh
virtual environment there (``python -m venv``, no system site packages) and runs the blocks in README
order, each with ``bash -c BLOCK`` in the clone, with a timeout. The block named ``install`` sets up
the environment; ``--skip-install`` skips it and runs the other blocks in the current environment
instead, with the clone first on ``PYTHONPATH`` (so the clone's code is what runs, although the
packages were installed from elsewhere).

Every block runs with ``TMPDIR`` in the script's temporary folder and a marker variable in its
environment; processes still carrying the marker after the block (and a grace period) were left
running by it: they are listed, stopped, and the block fails.

Too slow for the test suite (minutes per block); ``tests/test_readme.py`` checks that the marked
blocks exist and parse. Examples::

    python tools/check_readme.py                      # fresh venv, install, then every block
    python tools/check_readme.py --skip-install --only deployment
    python tools/check_readme.py --list
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^<!-- readme-check: ([a-z0-9][a-z0-9-]*) -->$")
INSTALL = "install"
#: Name of the environment variable every block's processes inherit, to find the ones left running.
TAG_VAR = "NNCFL_README_CHECK"


@dataclass(frozen=True)
class Block:
    name: str
    line: int  # 1-based line of the marker
    text: str


def extract_blocks(readme: str) -> list[Block]:
    """The marked ```bash blocks of ``readme``, in order; ``ValueError`` on a malformed marker."""
    lines = readme.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        m = MARKER.match(line.strip())
        if not m:
            continue
        if i + 1 >= len(lines) or lines[i + 1].strip() != "```bash":
            raise ValueError(f"README line {i + 1}: marker {m.group(1)!r} is not followed by a ```bash fence")
        try:
            end = next(j for j in range(i + 2, len(lines)) if lines[j].strip() == "```")
        except StopIteration:
            raise ValueError(f"README line {i + 1}: block {m.group(1)!r} is never closed") from None
        blocks.append(Block(m.group(1), i + 1, "\n".join(lines[i + 2 : end]) + "\n"))
    names = [b.name for b in blocks]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"README: blocks marked more than once: {', '.join(sorted(dupes))}")
    return blocks


def _tagged_pids(tag: str) -> list[int]:
    """Processes whose environment holds ``TAG_VAR=tag`` (Linux /proc; others: none found)."""
    needle = f"{TAG_VAR}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            found.append(int(entry.name))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _stop(pids: list[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.2)


def run_block(
    block: Block, cwd: Path, env: dict[str, str], timeout: float, log: Path, grace: float
) -> tuple[bool, str]:
    """Run one block; (passed, reason). Output goes to ``log``."""
    tag = secrets.token_hex(8)
    env = {**env, TAG_VAR: tag}
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            ["bash", "-c", block.text], cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = proc.wait(timeout=timeout)
            reason = f"exit code {code}" if code else ""
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            reason = f"timed out after {timeout:.0f} s"
    # helpers (Flower's SuperExec, ClientApp processes) exit on their own once their parent is gone
    deadline = time.monotonic() + grace
    left = _tagged_pids(tag)
    while left and time.monotonic() < deadline:
        time.sleep(1)
        left = _tagged_pids(tag)
    if left:
        listing = "; ".join(f"{p}: {_cmdline(p)[:120]}" for p in left)
        _stop(left)
        reason = ", ".join(filter(None, [reason, f"left {len(left)} process(es) running ({listing})"]))
    return not reason, reason


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md", help="README to read the blocks from")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these blocks (plus install unless skipped)")
    parser.add_argument("--skip-install", action="store_true",
                        help="do not create a venv or run the install block; use the current environment")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per block (default 1200)")
    parser.add_argument("--grace", type=float, default=30,
                        help="seconds a block's helper processes may take to exit after it (default 30)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (clone, venv, logs)")
    parser.add_argument("--list", action="store_true", help="list the marked blocks and exit")
    args = parser.parse_args(argv)

    blocks = extract_blocks(args.readme.read_text(encoding="utf-8"))
    if args.list:
        for b in blocks:
            print(f"{b.name:<14} README line {b.line}, {len(b.text.splitlines())} lines")
        return 0
    if args.only:
        unknown = set(args.only) - {b.name for b in blocks}
        if unknown:
            parser.error(f"no block named {', '.join(sorted(unknown))}; see --list")
    selected = [b for b in blocks if (not args.only or b.name in args.only or b.name == INSTALL)]
    if args.skip_install:
        selected = [b for b in selected if b.name != INSTALL]

    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    if dirty.strip():
        print("check_readme: the working tree has uncommitted changes; the clone has only the committed HEAD",
              file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="nncfl-readme-"))
    clone, tmpdir = tmp / "clone", tmp / "tmp"
    tmpdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "FLWR_HOME")}
    env.update(TMPDIR=str(tmpdir), FLWR_TELEMETRY_ENABLED="0", PIP_DISABLE_PIP_VERSION_CHECK="1")
    results: list[tuple[str, bool, str, float]] = []
    try:
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True)
        print(f"check_readme: clone of {ROOT} at {head.stdout.strip()} in {clone}")
        if args.skip_install:
            env["PYTHONPATH"] = str(clone)
            print(f"check_readme: install skipped; current environment ({sys.executable}), PYTHONPATH={clone}")
        else:
            venv = tmp / "venv"
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
            print(f"check_readme: fresh virtual environment {venv}")
        if args.readme.resolve() != (ROOT / "README.md").resolve():
            print(f"check_readme: blocks from {args.readme}, run in the clone")
        for block in selected:
            print(f"check_readme: [{block.name}] running (README line {block.line}, timeout {args.timeout:.0f} s)",
                  flush=True)
            log = tmp / f"{block.name}.log"
            start = time.monotonic()
            ok, reason = run_block(block, clone, env, args.timeout, log, args.grace)
            seconds = time.monotonic() - start
            results.append((block.name, ok, reason, seconds))
            print(f"check_readme: [{block.name}] {'PASS' if ok else 'FAIL'} in {seconds:.0f} s"
                  + (f": {reason}" if reason else "") + f" (output: {log})", flush=True)
            if not ok:
                tail = log.read_text(errors="replace").splitlines()[-40:]
                print("\n".join(f"    | {line}" for line in tail))
                if block.name == INSTALL:
                    print("check_readme: install failed; not running the other blocks")
                    break
    finally:
        print("\ncheck_readme: summary")
        for name, ok, reason, seconds in results:
            print(f"  {'PASS' if ok else 'FAIL'}  {name:<14} {seconds:6.0f} s  {reason}")
        if args.keep or any(not ok for _, ok, _, _ in results):
            print(f"check_readme: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if results and all(ok for _, ok, _, _ in results) and len(results) == len(selected) else 1


if __name__ == "__main__":
    sys.exit(main())
