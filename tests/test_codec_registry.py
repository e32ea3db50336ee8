"""The codec registry: explicit registration, and codecs declared as ``nnc_fl.codecs`` entry points
by an installed package, which make_codec finds in processes that never imported them."""

import os
import subprocess
import sys
import textwrap
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from experiments import baselines as B
from nnc_fl import codecs as C
from nnc_fl.codecs import make_codec, registered_codecs

ROOT = Path(__file__).resolve().parents[1]


def test_make_codec_loads_an_entry_point_for_an_unregistered_name(monkeypatch):
    monkeypatch.setattr(C, "_REGISTRY", {k: v for k, v in C._REGISTRY.items() if k not in B.BASELINE_CODECS})
    group = C.ENTRY_POINT_GROUP
    eps = [
        metadata.EntryPoint(n, f"experiments.baselines:{cls.__name__}", group) for n, cls in B.BASELINE_CODECS.items()
    ]
    eps.append(metadata.EntryPoint("broken", "experiments.no_such_module:Codec", group))
    eps.append(metadata.EntryPoint("topk", "experiments.baselines:STCCodec", group))  # shadowed by the first
    asked = []
    monkeypatch.setattr(metadata, "entry_points", lambda group: asked.append(group) or list(eps))
    assert set(registered_codecs()) >= set(B.BASELINE_CODECS) | {"broken", "nnc", "fp32"}
    assert "topk" not in C._REGISTRY
    codec = make_codec("topk", ratio=0.5)
    assert type(codec) is B.TopKCodec and C._REGISTRY["topk"] is B.TopKCodec
    B.register_baselines()  # the same factories: no conflict
    with pytest.raises(ValueError, match=r"entry point 'experiments\.no_such_module:Codec' failed to load"):
        make_codec("broken")
    with pytest.raises(ValueError, match="unknown codec 'nope'"):
        make_codec("nope")
    assert set(asked) == {"nnc_fl.codecs"}


def test_pyproject_declares_the_baselines_and_a_fresh_process_finds_them(tmp_path):
    """A process that never imports experiments builds "topk" from the installed entry points (a
    stand-in dist-info carrying pyproject's declarations); importing the module registers nothing
    (only the name looked up is registered)."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["nnc_fl.codecs"]
    assert declared == {n: f"experiments.baselines:{cls.__name__}" for n, cls in B.BASELINE_CODECS.items()}
    dist = tmp_path / "nnc_fl_entry_probe-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: nnc-fl-entry-probe\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[nnc_fl.codecs]\n" + "".join(f"{n} = {v}\n" for n, v in declared.items()))
    script = textwrap.dedent("""
        import sys
        import nnc_fl.codecs as c
        assert "experiments.baselines" not in sys.modules
        codec = c.make_codec("topk", ratio=0.5)
        assert type(codec).__module__ == "experiments.baselines", codec
        assert sorted(c._REGISTRY) == ["fp32", "nnc", "topk"], sorted(c._REGISTRY)
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
