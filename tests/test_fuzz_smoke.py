"""The decoder fuzz campaign's core loop, briefly (``python -m experiments.fuzz`` runs a million inputs)."""

from __future__ import annotations

import time

import numpy as np
import pytest

import nnc_fl
from nnc_fl import bitstream as bs
from nnc_fl import payloads

fuzz = pytest.importorskip("experiments.fuzz")


@pytest.fixture(scope="module")
def corpus():
    return fuzz.build_corpus()


def test_corpus_covers_every_mode_dtype_and_the_zstd_flag(corpus):
    infos = [nnc_fl.inspect(c.data) for c in corpus]
    assert {t.mode for i in infos for t in i.tensors} == set(bs.MODE_NAMES)
    assert {t.dtype for i in infos for t in i.tensors} == set(bs.DTYPES.values())
    assert {(t.mode, i.zstd) for i in infos for t in i.tensors if t.mode in bs.ZSTD_MODES} == {
        (m, z) for m in bs.ZSTD_MODES for z in (False, True)
    }
    assert {len(i.fingerprint or b"") for i in infos} == {0, 1, 32, 48, 64}


def test_2000_mutations_neither_crash_nor_hang_the_decoder(corpus):
    # a hang is a call that does not come back: 20 s is far above any input here (~3 ms each when
    # idle), so a loaded machine cannot turn a slow call into a false hang
    fuzzer = fuzz.Fuzzer(corpus, seed=2024, hang_limit=20.0)
    fuzzer.warm_up()
    report = fuzzer.run(range(2000)).to_json()
    assert report["crash_count"] == 0, report["crashes"][:2]
    assert report["hang_count"] == 0, report["hangs"][:2]
    assert report["mismatch_count"] == 0, report["mismatches"][:2]
    assert report["over_budget_count"] == 0, report["over_budget"][:2]
    # the mutations get past the CRCs and the table into the payload decoders
    assert report["inputs"] == 2000 and set(report["outcomes"]) == set(fuzz.KINDS)
    assert report["outcomes"]["payload"]["ok"] > 100 and report["outcomes"]["header"]["LimitError"] > 10
    reasons = "\n".join(report["reasons"])
    for deep in ("payload ends before all", "Golomb", "zstd frame declares", " scale ",
                 "state machine without dependent", "sparse", "non-minimal varint", "SchemaError"):
        assert deep in reasons, deep


def test_the_loop_reports_planted_crashes_hangs_and_mismatches(corpus, monkeypatch):
    def crashes(view, t, r):
        raise IndexError("planted")

    def hangs(view, t, r):  # spends CPU time: a hang is measured in CPU seconds, not wall time
        end = time.process_time() + 0.06
        while time.process_time() < end:
            pass
        raise nnc_fl.FormatError("slow")

    decode_tensor = nnc_fl.decode_tensor

    def lies(data, name, **kw):
        out = decode_tensor(data, name, **kw)
        return out + 1 if out.dtype == np.float64 else out

    monkeypatch.setitem(payloads._DECODERS, bs.MODE_SPARSE, crashes)
    monkeypatch.setitem(payloads._DECODERS, bs.MODE_TERNARY, hangs)
    monkeypatch.setattr(nnc_fl, "decode_tensor", lies)
    report = fuzz.Fuzzer(corpus, seed=7, hang_limit=0.05).run(range(200)).to_json()
    assert report["crash_count"] > 0 and report["hang_count"] > 0 and report["mismatch_count"] > 0
    crash = report["crashes"][0]
    assert crash["error"] == "IndexError: planted" and "_decode_sparse" not in crash["traceback"]
    assert "crashes" in crash["traceback"] and bytes.fromhex(crash["input_hex"])
    assert any(h["error"].endswith("(outcome FormatError: slow)") for h in report["hangs"])
    assert "differs from decode()" in report["mismatches"][0]["error"]
    assert report["other_exceptions"] >= report["crash_count"]


def test_inputs_are_reproducible_from_seed_and_index(corpus):
    assert fuzz.make_input(3, 12345, corpus) == fuzz.make_input(3, 12345, corpus)
    assert fuzz.make_input(3, 12345, corpus) != fuzz.make_input(4, 12345, corpus)


def test_the_raw_table_writer_writes_what_the_library_refuses(corpus):
    s = fuzz.parse(corpus[0].data)
    s.entries[0].dims = [2**32, 2**32]  # a product that wraps to 0 in 64 bits
    with pytest.raises(nnc_fl.FormatError, match="above the limit"):
        nnc_fl.decode(s.serialise())
    s = fuzz.parse(corpus[0].data)
    s.count = fuzz._nonminimal(len(s.entries), np.random.default_rng(0))
    with pytest.raises(nnc_fl.FormatError, match="varint"):
        nnc_fl.inspect(s.serialise())
