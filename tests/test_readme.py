"""The README against the code: marked recipe blocks exist and parse, the settings tables are complete.

Running the blocks takes minutes (``python tools/check_readme.py``); this only checks what is fast.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from nnc_fl.codecs import NNCCodec
from strategies import DownlinkSettings, ValidationSettings
from strategies.settings import DEFAULT_PARAMS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
QUICKSTART = ROOT / "examples" / "quickstart"


def _check_readme():
    spec = importlib.util.spec_from_file_location("check_readme", ROOT / "tools" / "check_readme.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


BLOCKS = {b.name: b for b in _check_readme().extract_blocks(README)}


def test_marked_blocks_exist():
    assert list(BLOCKS) == ["install", "simulation", "deployment"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("name", ["install", "simulation", "deployment"])
def test_marked_blocks_parse(name):
    out = subprocess.run(["bash", "-n", "-c", BLOCKS[name].text], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("name", ["simulation", "deployment"])
def test_recipes_stay_local_and_clean_up(name):
    text = BLOCKS[name].text
    assert set(re.findall(r"\d+\.\d+\.\d+\.\d+", text)) <= {"127.0.0.1"}
    assert "localhost" not in text and "0.0.0.0" not in text
    assert "trap " in text and "mktemp -d" in text and "timeout " in text
    assert text.startswith("(\n") and text.rstrip().endswith(")")  # a subshell: cannot close the user's shell


def test_recipes_disable_runtime_dependency_installation():
    assert "flower-superlink --insecure --disable-runtime-dependency-installation" in BLOCKS["deployment"].text
    assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in BLOCKS["simulation"].text
    assert "flwr run . " in BLOCKS["simulation"].text


def test_signature_is_the_strategys():
    from strategies import CompressedStrategy

    params = list(inspect.signature(CompressedStrategy.__init__).parameters.values())[1:]
    shown = ", ".join(p.name if p.default is p.empty else f"{p.name}={p.default!r}" for p in params)
    assert f"CompressedStrategy({shown})".replace("'", '"') in README


def _table(marker: str) -> dict[str, list[str]]:
    """Rows of the markdown table after ``<!-- table: marker -->``: first cell (unquoted) -> cells."""
    lines = README.splitlines()
    start = lines.index(f"<!-- table: {marker} -->") + 3  # marker, header, separator
    rows = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0].strip("`")] = cells
    return rows


def _literal(cell: str):
    return ast.literal_eval(cell.strip("`"))


def test_codec_parameter_table_matches_the_codec():
    rows = _table("nnc codec parameters")
    params = {n: p for n, p in inspect.signature(NNCCodec.__init__).parameters.items() if n != "self"}
    assert list(rows) == list(params)
    for name, p in params.items():
        assert _literal(rows[name][2]) == p.default, name
        assert len(rows[name]) == 5 and all(rows[name]), name
    assert set(DEFAULT_PARAMS["nnc"]) <= set(rows)


@pytest.mark.parametrize(
    ("marker", "cls"),
    [("DownlinkSettings fields", DownlinkSettings), ("ValidationSettings fields", ValidationSettings)],
)
def test_settings_tables_match_the_dataclasses(marker, cls):
    rows = _table(marker)
    fields = dataclasses.fields(cls)
    assert list(rows) == [f.name for f in fields]
    for f in fields:
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        assert _literal(rows[f.name][2]) == default, f.name


def test_quickstart_app_is_complete():
    meta = tomllib.loads((QUICKSTART / "pyproject.toml").read_text(encoding="utf-8"))
    components = meta["tool"]["flwr"]["app"]["components"]
    for ref in components.values():
        module = ref.split(":")[0]
        assert (QUICKSTART / (module.replace(".", "/") + ".py")).is_file(), ref
    # nnc-fl is not on PyPI: the app runs in the environment where it is installed (README, Recipes)
    assert not any(d.startswith("nnc-fl") for d in meta["project"]["dependencies"])
    declared = set(meta["tool"]["flwr"]["app"]["config"])
    used = set()
    for path in (QUICKSTART / "nncfl_quickstart").glob("*.py"):
        used |= set(re.findall(r'cfg\["([a-z-]+)"\]', path.read_text(encoding="utf-8")))
    assert used and used <= declared, used - declared
    for name in ("simulation", "deployment"):
        for key in re.findall(r"([a-z-]+)=", BLOCKS[name].text.split("--run-config", 1)[1].split("\n")[0]):
            assert key in declared, (name, key)
