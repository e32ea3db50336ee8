"""Deployment on one machine: a SuperLink, three SuperNodes and ``flwr run`` of the compressed app.

Everything listens on 127.0.0.1 with free ports; FLWR_HOME lives in tmp; every process is started
in its own session and its whole process group is killed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import APP_DIR

NODES = 3
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early with code {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def _stop(procs: list[subprocess.Popen]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, sig)
        deadline = time.monotonic() + 10
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.mark.slow
def test_superlink_supernodes_flwr_run(tmp_path):
    home = tmp_path / "flwr-home"
    home.mkdir()
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(home),
        FLWR_TELEMETRY_ENABLED="0",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join(
            p for p in (str(APP_DIR.parent.parent), str(APP_DIR), env.get("PYTHONPATH")) if p
        ),
    )
    link_port = _free_port()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "nncfl-test"\n\n'
        f'[superlink.nncfl-test]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n'
    )
    procs: list[subprocess.Popen] = []
    logs = []

    def start(name: str, args: list[str]) -> subprocess.Popen:
        fh = (tmp_path / f"{name}.log").open("wb")
        logs.append(fh)
        proc = subprocess.Popen(
            args, env=env, cwd=tmp_path, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        procs.append(proc)
        return proc

    bw, result = tmp_path / "bandwidth.jsonl", tmp_path / "result.json"
    try:
        link = start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--insecure",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(link_port),
            ],
        )
        _wait_port(link_port, link)
        for i in range(NODES):
            start(
                f"supernode{i}",
                [
                    str(BIN / "flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{link_port}",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(_free_port()),
                    "--node-config",
                    f"partition-id={i} num-partitions={NODES}",
                ],
            )
        run_config = f"num-server-rounds=3 min-nodes={NODES} bandwidth-log='{bw}' result-path='{result}'"
        out = subprocess.run(
            [str(BIN / "flwr"), "run", str(APP_DIR), "nncfl-test", "--run-config", run_config, "--stream"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        deadline = time.monotonic() + 20
        while not result.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert result.exists(), out.stdout[-3000:] + (tmp_path / "superlink.log").read_text()[-3000:]
    finally:
        _stop(procs)
        for fh in logs:
            fh.close()

    rows = [json.loads(line) for line in bw.read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert all(r["accepted"] == NODES and r["rejected"] == 0 and r["failures"] == 0 for r in rows), rows
    assert rows[0]["keyframes"] == NODES and rows[0]["down_bytes"] > 0
    assert all(0 < r["up_bytes"] < r["up_raw_bytes"] for r in rows)
    summary = json.loads(result.read_text())
    assert summary["rounds"] == 3 and summary["version"] == 4
    assert summary["fingerprint"] == summary["server_fingerprint"]
    # each SuperNode evaluated exactly the server's G_v in every round
    assert (summary["fingerprints_checked"], summary["fingerprint_mismatches"]) == (NODES * 3, 0)
