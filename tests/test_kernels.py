"""The numba kernels against the pure-Python reference, bit for bit, and pinned golden bitstreams."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

import nnc_fl
from nnc_fl import _dq, _varint, _zstdframe, encode, reference
from nnc_fl._dq import (
    MAX_DQ_INDEX,
    decode_levels_dq,
    decode_values_dq,
    dq_levels,
    encode_indices_dq,
    encode_levels_dq,
)
from nnc_fl._floatcoder import BAD_EXPONENT as FLOAT_BAD_EXPONENT
from nnc_fl._floatcoder import FLAG_FULL as FLOAT_FLAG_FULL
from nnc_fl._floatcoder import OK as FLOAT_OK
from nnc_fl._floatcoder import READ_SLACK as FLOAT_READ_SLACK
from nnc_fl._floatcoder import SHORT_PAYLOAD as FLOAT_SHORT_PAYLOAD
from nnc_fl._floatcoder import decode_float_payload, decode_floats, encode_float_payload
from nnc_fl._levels import (
    BAD_LEVEL,
    MAX_LEVEL,
    OK,
    READ_SLACK,
    SHORT_PAYLOAD,
    decode_levels,
    decode_values,
    eg_context_gain,
    encode_levels,
    encode_levels_rd,
    temporal_classes,
)
from nnc_fl._probability import RATE_PAIRS
from nnc_fl._quantise import dequantise, grid_levels_or, max_magnitude, on_grid, quantise, sum_squares


def _levels(rng, n, kind):
    if kind == "laplace":
        return np.round(rng.laplace(scale=1.5, size=n)).astype(np.int64)
    if kind == "sparse":
        v = np.round(rng.laplace(scale=3, size=n)).astype(np.int64)
        v[rng.random(n) < 0.9] = 0
        return v
    if kind == "large":
        return rng.integers(-(1 << 40), 1 << 40, size=n, dtype=np.int64)
    if kind == "extreme":
        return rng.choice(np.array([MAX_LEVEL, -MAX_LEVEL, 0, 1, -13, 14], np.int64), size=n)
    if kind == "wide":  # a keyframe's levels: uniform over +-55 grid steps
        return rng.integers(-55, 56, size=n, dtype=np.int64)
    raise ValueError(kind)


@pytest.mark.parametrize("egctx", [False, True])
@pytest.mark.parametrize("kind", ["laplace", "sparse", "large", "extreme", "wide"])
@pytest.mark.parametrize("rate_index", range(len(RATE_PAIRS)))
def test_kernel_matches_reference_bit_for_bit(kind, rate_index, egctx):
    rng = np.random.default_rng(rate_index * 7 + len(kind))
    for n, cols in [(1, 1), (7, 7), (60, 12), (333, 37)]:
        levels = _levels(rng, n, kind)
        fast = encode_levels(levels, cols, rate_index, egctx).tobytes()
        slow = reference.encode_levels(levels.tolist(), cols, rate_index, egctx=egctx)
        assert fast == slow
        assert reference.decode_levels(slow, n, cols, rate_index, egctx=egctx) == levels.tolist()
        decoded, status = decode_levels(np.frombuffer(fast, np.uint8), n, cols, rate_index, egctx)
        assert status == OK
        np.testing.assert_array_equal(decoded, levels)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["laplace", "sparse", "wide", "large"])
def test_decode_values_is_decode_levels_then_dequantise(kind, dtype):
    # the decoder the API uses for float32/64 tensors writes level * step (float64, then the dtype)
    # straight into the output; it must give what the levels decoder and dequantise give, bit for bit
    rng = np.random.default_rng(len(kind))
    for n, cols in [(1, 1), (60, 12), (333, 37), (2000, 2000)]:
        levels = _levels(rng, n, kind)
        step = float(rng.uniform(1e-6, 1e-2))
        for egctx in (False, True):
            payload = encode_levels(levels, cols, 1, egctx)
            values = np.empty(n, dtype)
            status, top = decode_values(payload, cols, 1, egctx, step, values)
            assert status == OK and top == np.abs(levels).max()
            expected = dequantise(levels, step).astype(dtype)
            assert values.tobytes() == expected.tobytes()


def test_decode_values_reports_what_decode_levels_reports():
    levels = np.arange(-500, 500, dtype=np.int64)
    payload = encode_levels(levels, 1000, 0)
    status, _ = decode_values(payload[: len(payload) // 3], 1000, 0, False, 0.5, np.empty(levels.size, np.float32))
    assert status == SHORT_PAYLOAD
    for egctx in (False, True):
        status, _ = decode_values(_one_level_payload(62, 0, egctx), 1, 0, egctx, 1.0, np.empty(1))
        assert status == BAD_LEVEL
    assert decode_values(np.zeros(0, np.uint8), 1, 0, False, 1.0, np.empty(0)) == (OK, 0)


def test_eg_context_gain_estimates_what_context_coded_prefixes_save():
    # the encoder codes the prefixes in contexts where this estimate is positive, instead of coding
    # the levels twice: it must follow the coded sizes to a few bits
    rng = np.random.default_rng(8)
    for trial in range(24):
        n = int(rng.integers(50, 5000))
        levels = np.round(rng.laplace(scale=1.0, size=n))
        outliers = rng.random(n) < [0.0, 0.002, 0.02, 0.5][trial % 4]
        levels[outliers] = rng.integers(-3000, 3000, int(outliers.sum())) if trial % 8 < 4 else 13
        levels = levels.astype(np.int64)
        rate_index = trial % len(RATE_PAIRS)
        bypass, ctx = encode_levels(levels, 50, rate_index), encode_levels(levels, 50, rate_index, True)
        saved = 8 * (bypass.size - ctx.size)
        estimate = eg_context_gain(levels, rate_index)
        assert abs(estimate - saved) <= 24 + 0.005 * abs(saved), (trial, estimate, saved)
    assert eg_context_gain(np.arange(-12, 13, dtype=np.int64), 0) == 0.0  # nothing past the flags


def test_max_magnitude():
    rng = np.random.default_rng(4)
    for kind in ("laplace", "sparse", "extreme"):
        levels = _levels(rng, 1000, kind)
        assert max_magnitude(levels) == np.abs(levels).max()
    assert max_magnitude(np.zeros(0, np.int64)) == 0
    assert max_magnitude(np.array([-MAX_LEVEL], np.int64)) == MAX_LEVEL


def test_context_coded_prefixes_pay_on_wide_levels_and_rd_estimates_them():
    rng = np.random.default_rng(5)
    levels = _levels(rng, 20000, "wide")
    bypass, ctx = encode_levels(levels, 100, 0), encode_levels(levels, 100, 0, True)
    assert ctx.size < 0.85 * bypass.size  # uniform over 111 values: 6.8 bits of entropy per level
    x = levels + rng.uniform(-0.5, 0.5, levels.size)
    coded = levels.copy()
    payload = encode_levels_rd(coded, x, 1.0, 0.3, 100, 0, True)
    assert np.abs(coded - levels).sum() > 0 and np.abs(coded - x).max() < 1  # some lowered, within one step
    decoded, status = decode_levels(payload, levels.size, 100, 0, True)
    assert status == OK
    np.testing.assert_array_equal(decoded, coded)


def test_reference_constants_equal_the_kernels():
    # The reference writes the format's constants out; the kernels must agree with every one of them.
    from nnc_fl import _levels, _probability, _rangecoder

    kernels = {
        "GT_FLAGS": _levels.GT_FLAGS,
        "SIG_CTX": _levels.SIG_CTX,
        "SIGN_CTX": _levels.SIGN_CTX,
        "GT_CTX": _levels.GT_CTX,
        "N_CONTEXTS": _levels.N_CONTEXTS,
        "ACT_HIGH": _levels.ACT_HIGH,
        "MAX_LEVEL": _levels.MAX_LEVEL,
        "MAX_EG_PREFIX": _levels.MAX_EG_PREFIX,
        "EG_CTX": _levels.EG_CTX,
        "EG_CONTEXTS": _levels.EG_CONTEXTS,
        "N_CONTEXTS_EG": _levels.N_CONTEXTS_EG,
        "RATE_PAIRS": tuple(tuple(pair) for pair in _probability.RATE_PAIRS.tolist()),
        "WARMUP_BINS": _probability.WARMUP_BINS,
        "P_INIT": _probability._HALF16,
        "PROB_BITS": _rangecoder.PROB_BITS,
        "PROB_ONE": _rangecoder.PROB_ONE,
        "PROB_MIN": _rangecoder.PROB_MIN,
        "RANGE_MASK": _rangecoder._MASK32,
        "RANGE_TOP": _rangecoder._TOP,
    }
    for name, value in kernels.items():
        assert getattr(reference, name) == value, name
    assert _probability.WARMUP_SHIFT.tolist() == [reference.warmup_shift(n) for n in range(reference.WARMUP_BINS)]


def test_decoder_reads_at_most_four_bytes_past_a_valid_payload():
    rng = np.random.default_rng(3)
    worst = 0
    for trial in range(300):
        n = int(rng.integers(1, 300))
        cols = max(1, n // 5)
        levels = _levels(rng, n, ["laplace", "sparse", "extreme"][trial % 3])
        payload = encode_levels(levels, cols, 0).tobytes()
        stats = {}
        assert reference.decode_levels(payload, n, cols, 0, stats) == levels.tolist()
        worst = max(worst, stats["bytes_read"] - len(payload))
        _, status = decode_levels(np.frombuffer(payload, np.uint8), n, cols, 0)
        assert status == OK
    assert worst <= 4 <= READ_SLACK


def test_truncated_payload_is_reported_not_misread():
    levels = np.arange(-500, 500, dtype=np.int64)
    payload = encode_levels(levels, 1000, 0)
    _, status = decode_levels(payload[: len(payload) // 3], levels.size, 1000, 0)
    assert status != OK


def _one_level_payload(prefix_ones, low_bits=None, egctx=False):
    """A payload of one positive level (cols 1, rate index 0) whose Exp-Golomb part has ``prefix_ones``
    ones, then (if ``low_bits`` is given) the terminating zero and ``prefix_ones`` low bits."""
    model, enc = reference._Model(0, reference.N_CONTEXTS_EG), reference.RangeEncoder()
    gt_bins = [(reference.GT_CTX + 3 * (k - 1), 1) for k in range(1, reference.GT_FLAGS + 1)]
    prefix = [1] * prefix_ones + ([0] if low_bits is not None else [])
    for c, bit in [(reference.SIG_CTX, 1), (reference.SIGN_CTX, 0), *gt_bins]:  # no neighbours, idle column
        enc.bin(bit, model.p1(c))
        model.update(c, bit)
    for j, bit in enumerate(prefix):
        if egctx:
            c = reference.EG_CTX + min(j, reference.EG_CONTEXTS - 1)
            enc.bin(bit, model.p1(c))
            model.update(c, bit)
        else:
            enc.bypass(bit, 1)
    if low_bits is not None:
        enc.bypass(low_bits, prefix_ones)
    return np.frombuffer(enc.finish(), np.uint8)


@pytest.mark.parametrize(
    "prefix_ones, low_bits, expected",
    [
        (61, (1 << 61) - 12, MAX_LEVEL),  # |q| - GT_FLAGS = 2**62 - 12: the largest level
        (61, (1 << 61) - 11, None),  # one more
        (62, 0, None),
        (62, (1 << 62) - 1, None),  # |q| - GT_FLAGS = 2**63 - 1: adding GT_FLAGS would overflow int64
        (63, None, None),  # prefix longer than MAX_EG_PREFIX
    ],
)
@pytest.mark.parametrize("egctx", [False, True])
def test_levels_beyond_max_level_are_reported(prefix_ones, low_bits, expected, egctx):
    levels, status = decode_levels(_one_level_payload(prefix_ones, low_bits, egctx), 1, 1, 0, egctx)
    if expected is None:
        assert status == BAD_LEVEL
    else:
        assert status == OK and levels.tolist() == [expected]


# Golden bitstreams: any change to these bytes is a format change (bump the version, update FORMAT.md).
GOLDEN_LEVELS = np.array([0, 1, -1, 2, 0, 0, 5, -13, 14, 100, 0, -2, 0, 0, 0, 1] * 4, np.int64) * np.repeat(
    [1, -1, 0, 3], 16
)


def test_golden_level_payload():
    payload = encode_levels(GOLDEN_LEVELS, 4, 0).tobytes()
    assert payload.hex() == "9975c96800546453dce5d05a595e950d4419b3c6753f7bf92e4b9b5d9424b7b01320"
    assert reference.encode_levels(GOLDEN_LEVELS.tolist(), 4) == payload


def test_golden_stream():
    rng = np.random.default_rng(2024)
    tensors = {
        "conv.weight": (rng.laplace(size=(4, 2, 3, 3)) * 0.02).astype(np.float32),
        "conv.bias": (rng.normal(size=4) * 0.01).astype(np.float32),
        "steps": np.array(7, np.int64),
        "empty": np.zeros((0, 5), np.float16),
    }
    data = encode(tensors, step=0.01, fingerprint=bytes(range(32)))
    assert len(data) == 164
    assert hashlib.sha256(data).hexdigest() == "5ade1000dfc82e74ff5b3017e26e3da1cd8d54065c53172dac2c97de28027621"


#: RD-coded payloads and levels at three lambdas (rate-distortion rounding is the encoder's choice, so
#: only a golden stream notices when a change of its search changes the bytes).
GOLDEN_RD = "0f048d20b6ab214acffbfd23c5f18e93f779d6d758b1c64c34c8eb41ce5c2542"


def test_golden_rd_payloads():
    rng = np.random.default_rng(12)
    x = np.concatenate([rng.laplace(size=3000) * 0.02, rng.normal(size=1000) * 0.2])  # levels up to 69
    h = hashlib.sha256()
    for lam in (0.005, 0.02, 0.08):
        for egctx in (False, True):
            levels = quantise(x, 0.01, 2**40)[0]
            payload = encode_levels_rd(levels, x, 0.01, lam, 50, 1, egctx)
            h.update(payload.tobytes() + levels.tobytes())
    assert h.hexdigest() == GOLDEN_RD


def _kernel_outputs_digest():
    """SHA-256 over every kernel's outputs on a fixed mix of inputs: coded, RD-coded, hostile bytes."""
    rng = np.random.default_rng(77)
    h = hashlib.sha256()
    for kind in ("laplace", "sparse", "large", "extreme"):
        for rate_index in range(len(RATE_PAIRS)):
            levels = _levels(rng, 400, kind)
            for egctx in (False, True):
                payload = encode_levels(levels, 20, rate_index, egctx)
                decoded, status = decode_levels(payload, levels.size, 20, rate_index, egctx)
                h.update(payload.tobytes() + decoded.tobytes() + bytes([status]))
    x = rng.laplace(size=3000) * 0.03
    for lam in (0.02, 0.05, 0.3):
        levels, status = quantise(x, 0.01, MAX_LEVEL)
        payload = encode_levels_rd(levels, x, 0.01, lam, 60, 0, lam > 0.1)
        h.update(levels.tobytes() + payload.tobytes() + dequantise(levels, 0.01).tobytes() + bytes([status]))
        tref = temporal_classes(x * 0.8 + 0.004, 0.01, np.empty(x.size, np.int8))
        levels, status = quantise(x, 0.01, MAX_LEVEL)
        payload = encode_levels_rd(levels, x, 0.01, lam, 60, 0, False, tref)
        values = np.empty(x.size)
        status, top = decode_values(payload, 60, 0, False, 0.01, values, tref)
        h.update(tref.tobytes() + payload.tobytes() + values.tobytes() + bytes([status, min(int(top), 255)]))
    for _ in range(60):
        junk = rng.integers(0, 256, size=int(rng.integers(0, 40)), dtype=np.uint8)
        decoded, status = decode_levels(junk, 200, 20, int(rng.integers(0, len(RATE_PAIRS))), bool(_ % 2))
        h.update(decoded.tobytes() + bytes([status]))
    for lam in (0.0, 0.4):
        payload, ks = encode_levels_dq(x, 0.01, lam, 60, 1)
        decoded, status = decode_levels_dq(payload, x.size, 60, 1)
        h.update(payload.tobytes() + ks.tobytes() + decoded.tobytes() + bytes([status]))
    for _ in range(30):
        junk = rng.integers(0, 256, size=int(rng.integers(0, 40)), dtype=np.uint8)
        decoded, status = decode_levels_dq(junk, 200, 20, int(rng.integers(0, len(RATE_PAIRS))))
        h.update(decoded.tobytes() + bytes([status]))
    from nnc_fl._ratesearch import rate_costs
    from nnc_fl._rowref import choose_refs, decode_rows, encode_rows

    for dq in (False, True):
        ks = _levels(rng, 600, "laplace").reshape(30, 20)
        ks[20:] = ks[3:13]
        refs = choose_refs(ks.ravel(), 20, 8, 0.6)
        payload = encode_rows(ks.ravel(), refs, 20, 1, dq)
        decoded, status = decode_rows(payload, 600, 20, 1, dq)
        h.update(refs.tobytes() + payload.tobytes() + decoded.tobytes() + bytes([status]))
        h.update(rate_costs(ks.ravel(), 20, dq).tobytes())
        junk = rng.integers(0, 256, size=40, dtype=np.uint8)
        decoded, status = decode_rows(junk, 200, 20, 0, dq)
        h.update(decoded.tobytes() + bytes([status]))
    for kind in FLOAT_KINDS:
        for dtype in FLOAT_DTYPES:
            x = _floats(rng, 150, kind, dtype)
            for full in (False, True, None):
                payload = encode_float_payload(x, full)
                h.update(payload + decode_float_payload(payload, x.dtype, x.size, "x").tobytes())
    for _ in range(60):
        junk = rng.integers(0, 256, size=int(rng.integers(0, 40)), dtype=np.uint8)
        itemsize = int(rng.choice([2, 4, 8]))
        mbits = {2: 10, 4: 23, 8: 52}[itemsize]
        tz, e_top, full = int(rng.integers(0, mbits + 1)), int(rng.integers(0, 40)), bool(rng.integers(0, 2))
        decoded, status = decode_floats(junk, junk[:5], 100, itemsize, mbits, tz, e_top, full)
        h.update(decoded.tobytes() + bytes([status]))
    for _ in range(60):  # the sparse / ternary / zstd-frame kernels on hostile bytes
        junk = rng.integers(0, 256, size=int(rng.integers(0, 40)), dtype=np.uint8)
        count, n = int(rng.integers(0, 8)), int(rng.integers(1, 300))
        out = np.zeros(count, np.int64)
        h.update(out.tobytes() + str(_varint.decode_varints(junk, 0, junk.size, count, 2, out)).encode())
        dense = np.zeros(n, np.float32)
        status = _varint.scatter_gaps(junk, 0, junk.size, count, 2, n, np.arange(count, dtype=np.float32) + 1, dense)
        h.update(dense.tobytes() + str(status).encode() + str(_zstdframe.blocks_end(junk, 0)).encode())
    return h.hexdigest()


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="compares the jitted kernels with plain Python")
def test_kernels_give_the_same_bytes_with_the_jit_off():
    # Kernel coverage is measured with NUMBA_DISABLE_JIT=1: the plain-Python kernels must be the jitted ones.
    package_root = str(Path(nnc_fl.__file__).resolve().parents[1])
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, str(Path(__file__).parent), env.get("PYTHONPATH")]))
    code = "import nnc_fl, test_kernels; print(nnc_fl.__file__); print(test_kernels._kernel_outputs_digest())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    where, digest = out.stdout.split()
    assert Path(where).resolve() == Path(nnc_fl.__file__).resolve()
    assert digest == _kernel_outputs_digest()


# --- dependent quantisation (tools bit 2) ---------------------------------------------------------



def _indices(rng, n, kind):
    if kind == "extreme":
        return rng.choice(np.array([MAX_DQ_INDEX, -MAX_DQ_INDEX, 0, 1, -13, 14], np.int64), size=n)
    return _levels(rng, n, kind)


#: The two DQ machines: (the kernels' first state, the reference's ``dq`` argument, states).
MACHINES = [(0, True, 4), (_dq.START_8, 8, 8)]


@pytest.mark.parametrize("first, ref_dq, states", MACHINES)
@pytest.mark.parametrize("kind", ["laplace", "sparse", "large", "extreme"])
@pytest.mark.parametrize("rate_index", [0, 3])
def test_dq_kernels_match_reference_bit_for_bit(kind, rate_index, first, ref_dq, states):
    rng = np.random.default_rng(rate_index * 5 + len(kind))
    for n, cols in [(1, 1), (7, 7), (60, 12), (333, 37)]:
        ks = _indices(rng, n, kind)
        fast = encode_indices_dq(ks, cols, rate_index, first).tobytes()
        assert fast == reference.encode_levels(ks.tolist(), cols, rate_index, dq=ref_dq)
        expected = dq_levels(ks, first)
        assert reference.decode_levels(fast, n, cols, rate_index, dq=ref_dq) == expected.tolist()
        decoded, status = decode_levels_dq(np.frombuffer(fast, np.uint8), n, cols, rate_index, first)
        assert status == OK
        np.testing.assert_array_equal(decoded, expected)
        levels = [reference.dq_level(int(k), s, states) for k, s in zip(ks, _states(ks, states), strict=True)]
        assert levels == expected.tolist()


def _states(ks, states=4):
    out, s = [], 0
    for k in ks.tolist():
        out.append(s)
        s = reference.dq_next(s, k, states)
    return out


@pytest.mark.parametrize("first, ref_dq, states", MACHINES)
@pytest.mark.parametrize("lam", [0.0, 0.3, 2.0])
def test_dq_trellis_payload_is_its_indices_coded_and_errors_stay_below_two_steps(lam, first, ref_dq, states):
    rng = np.random.default_rng(21)
    x = rng.laplace(size=3000) * 0.05
    x[::97] *= 400  # large values: Exp-Golomb bins in the rate estimate and the coder
    for cols in (3000, 60, 7):
        payload, ks = encode_levels_dq(x, 0.01, lam, cols, 0, _dq.LOOKAHEAD, first)
        assert payload.tobytes() == encode_indices_dq(ks, cols, 0, first).tobytes()
        assert reference.encode_levels(ks.tolist(), cols, 0, dq=ref_dq) == payload.tobytes()
        levels = dq_levels(ks, first)
        assert np.abs(levels * 0.01 - x).max() < 2 * 0.01
        decoded, status = decode_levels_dq(payload, x.size, cols, 0, first)
        assert status == OK and np.array_equal(decoded, levels)


def test_dq_eight_states_lower_the_distortion_at_a_given_step():
    # The 8-state trellis packs the reconstruction sequences more densely (granular gain): at the
    # same step and lam = 0 (distortion only) its error is lower, its rate about the same.
    rng = np.random.default_rng(25)
    x = rng.normal(size=20000)
    out = []
    for first in (0, _dq.START_8):
        payload, ks = encode_levels_dq(x, 0.1, 0.0, 200, 0, _dq.LOOKAHEAD, first)
        out.append((np.mean((dq_levels(ks, first) * 0.1 - x) ** 2), payload.size))
    (mse4, size4), (mse8, size8) = out
    assert mse8 < 0.985 * mse4 and abs(size8 / size4 - 1) < 0.02


@pytest.mark.parametrize("lam", [0.2, 0.3])
def test_dq_lookahead_past_each_row_lowers_the_rate_distortion_cost(lam):
    # Without look-ahead a row's last indices (and the state handed to the next row) are chosen
    # blind to the values that follow; searching LOOKAHEAD elements into the next row chooses them
    # better on the whole: distortion + lam x (actual payload bits) falls, most on short rows
    # (rows of 16 here: by 1.2-1.6 % on average over 12 seeds, though not on every seed; by ~0.2 %
    # on iid rows of 128; 0.6-1.6 % fewer bytes on a GRU delta, experiments/nncodec_compare).
    costs = np.zeros(2)
    for seed in range(6):
        x = np.random.default_rng(seed).laplace(size=16 * 100) * 0.01
        for j, ahead in enumerate((0, _dq.LOOKAHEAD)):
            payload, ks = encode_levels_dq(x, 0.01, lam, 16, 0, ahead)
            decoded, status = decode_levels_dq(payload, x.size, 16, 0)
            assert status == OK and np.array_equal(decoded, dq_levels(ks))
            assert np.abs(decoded * 0.01 - x).max() < 0.02
            costs[j] += np.sum((x / 0.01 - decoded) ** 2) + lam * 8 * payload.size
    assert costs[1] < 0.995 * costs[0]


def test_dq_long_rows_are_searched_in_stretches():
    rng = np.random.default_rng(22)
    x = rng.normal(size=5000) * 0.02  # one row longer than a search stretch
    payload, ks = encode_levels_dq(x, 0.01, 0.3, 5000, 1)
    decoded, status = decode_levels_dq(payload, x.size, 5000, 1)
    assert status == OK and np.array_equal(decoded, dq_levels(ks))
    assert np.abs(decoded * 0.01 - x).max() < 0.02


def test_dq_beats_rounding_at_equal_distortion_on_gaussian_values():
    rng = np.random.default_rng(23)
    x = rng.normal(size=20000)
    payload, ks = encode_levels_dq(x, 0.1, 0.0, 200, 0)
    mse_dq = np.mean((dq_levels(ks) * 0.1 - x) ** 2)
    q, _ = quantise(x, 0.2, MAX_LEVEL)
    mse_u = np.mean((q * 0.2 - x) ** 2)
    plain = encode_levels(q, 200, 0)
    assert mse_dq < 0.85 * mse_u and len(payload) < 1.03 * len(plain)  # trellis gain: ~1 dB, ~same rate


def _one_index_payload(prefix_ones, low_bits):
    """A DQ payload of one positive index (cols 1, rate 0) with the given Exp-Golomb part."""
    model, enc = reference._Model(0, reference.N_CONTEXTS_DQ), reference.RangeEncoder()
    gt_bins = [(reference.GT_CTX + 3 * (k - 1), 1) for k in range(1, reference.GT_FLAGS + 1)]
    for c, bit in [(reference.SIG_CTX, 1), (reference.SIGN_CTX, 0), *gt_bins]:
        enc.bin(bit, model.p1(c))
        model.update(c, bit)
    if low_bits is None:
        enc.bypass((1 << prefix_ones) - 1, prefix_ones)
    else:
        enc.bypass((1 << (prefix_ones + 1)) - 2, prefix_ones + 1)
        enc.bypass(low_bits, prefix_ones)
    return np.frombuffer(enc.finish(), np.uint8)


@pytest.mark.parametrize(
    "prefix_ones, low_bits, expected",
    [
        (60, (1 << 61) - 12 - (1 << 60), 2 * MAX_DQ_INDEX),  # index 2**61: the largest, level 2**62
        (60, (1 << 61) - 11 - (1 << 60), None),  # one more
        (63, None, None),  # prefix longer than MAX_EG_PREFIX
    ],
)
def test_dq_indices_beyond_the_largest_are_reported(prefix_ones, low_bits, expected):
    levels, status = decode_levels_dq(_one_index_payload(prefix_ones, low_bits), 1, 1, 0)
    if expected is None:
        assert status == BAD_LEVEL
    else:
        assert status == OK and levels.tolist() == [expected]


def test_dq_truncated_payload_is_reported():
    ks = np.arange(-500, 500, dtype=np.int64)
    payload = encode_indices_dq(ks, 1000, 0)
    _, status = decode_levels_dq(payload[: len(payload) // 3], ks.size, 1000, 0)
    assert status == SHORT_PAYLOAD
    status, _ = decode_values_dq(payload[: len(payload) // 3], 1000, 0, 0.5, np.empty(ks.size, np.float32))
    assert status == SHORT_PAYLOAD
    for prefix_ones, low_bits in [(60, (1 << 61) - 11 - (1 << 60)), (63, None)]:
        status, _ = decode_values_dq(_one_index_payload(prefix_ones, low_bits), 1, 0, 1.0, np.empty(1))
        assert status == BAD_LEVEL


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["laplace", "sparse", "large", "extreme"])
def test_decode_values_dq_is_decode_levels_dq_then_dequantise(kind, dtype):
    rng = np.random.default_rng(len(kind) + 40)
    for n, cols in [(1, 1), (60, 12), (333, 37), (2000, 2000)]:
        ks = _indices(rng, n, kind)
        payload = encode_indices_dq(ks, cols, 2)
        levels, status = decode_levels_dq(payload, n, cols, 2)
        assert status == OK
        step = float(rng.uniform(1e-6, 1e-2))
        values = np.empty(n, dtype)
        status, top = decode_values_dq(payload, cols, 2, step, values)
        assert status == OK and top == np.abs(levels).max()
        assert values.tobytes() == dequantise(levels, step).astype(dtype).tobytes()


def test_golden_dq_payload():
    payload = encode_indices_dq(GOLDEN_LEVELS, 4, 0).tobytes()
    assert payload.hex() == GOLDEN_DQ_HEX
    assert reference.encode_levels(GOLDEN_LEVELS.tolist(), 4, 0, dq=True) == payload
    payload = encode_indices_dq(GOLDEN_LEVELS, 4, 0, _dq.START_8).tobytes()
    assert payload.hex() == GOLDEN_DQ8_HEX
    assert reference.encode_levels(GOLDEN_LEVELS.tolist(), 4, 0, dq=8) == payload
    x = np.linspace(-0.3, 0.5, 64) ** 3
    payload, ks = encode_levels_dq(x, 0.002, 0.3, 8, 0)
    assert hashlib.sha256(payload.tobytes() + ks.tobytes()).hexdigest() == GOLDEN_DQ_TRELLIS
    payload, ks = encode_levels_dq(x, 0.002, 0.3, 8, 0, 0)  # the search without look-ahead
    assert hashlib.sha256(payload.tobytes() + ks.tobytes()).hexdigest() == GOLDEN_DQ_TRELLIS_NO_LOOKAHEAD


GOLDEN_DQ_HEX = "994e014000640521abec306be2f38d8be51e877c4fce738c4d6c394e923489e2c26180"
GOLDEN_DQ8_HEX = "994ea1e00078062867e83a2b27eec9a182ff4d8c80b5764aaf1b50671d5649e0c690"
GOLDEN_DQ_TRELLIS = "425555ec7ec07494708de4ee63818be588ccdddeadd3f990499c7fc0fd1af2ed"
GOLDEN_DQ_TRELLIS_NO_LOOKAHEAD = "e16b18a84d00695e1c8a98c29eeee0a103283740c2cf8624a71d963b5d03c17a"


def test_dq_reference_constants_equal_the_kernels():
    assert tuple(tuple(r) for r in _dq.TRANS[:4].tolist()) == reference.DQ_TRANS
    eight = _dq.TRANS[_dq.START_8 : _dq.START_8 + 8] - _dq.START_8
    assert tuple(tuple(r) for r in eight.tolist()) == reference.DQ_TRANS_8
    for states, first in ((4, 0), (8, _dq.START_8)):
        for s in range(states):
            assert _dq.QUANTISER[first + s] == reference._q1(s, states)
            assert _dq._sig_base(first + s) == reference.dq_sig_base(s, states)
    assert reference.DQ_SIG_CTX == _dq.DQ_SIG_CTX and reference.N_CONTEXTS_DQ == _dq.N_CONTEXTS_DQ
    assert reference.MAX_DQ_INDEX == _dq.MAX_DQ_INDEX


# --- encoder search over the rate pairs ------------------------------------------------------------


@pytest.mark.parametrize("dq, first", [(False, 0), (True, 0), (True, _dq.START_8)])
def test_rate_costs_estimate_each_pairs_payload(dq, first):
    from nnc_fl._ratesearch import rate_costs

    rng = np.random.default_rng(31)
    for kind in ("laplace", "sparse"):
        ks = _levels(rng, 4000, kind)
        costs = rate_costs(ks, 80, dq, first)
        sizes = [len(encode_indices_dq(ks, 80, r, first) if dq else encode_levels(ks, 80, r))
                 for r in range(len(RATE_PAIRS))]
        for bits, size in zip(costs, sizes, strict=True):
            m = np.abs(ks)
            eg = sum(2 * (int(v - 12).bit_length() - 1) + 1 for v in m[m > 12])
            assert abs((bits + eg) / 8 - size) <= 0.01 * size + 8
        assert sizes[int(np.argmin(costs))] <= min(sizes) * 1.01


# --- row references (tools bit 3) -----------------------------------------------------------------


def _repeating_rows(rng, rows, cols, kind):
    base = _indices(rng, rows * cols, kind).reshape(rows, cols)
    for r in range(2, rows, 3):  # copies and near-copies of earlier, non-adjacent rows
        base[r] = base[int(rng.integers(0, r - 1))]
        base[r, rng.random(cols) < 0.15] = 1
    base[1] = 0
    return base.ravel()


@pytest.mark.parametrize("kind", ["laplace", "sparse", "extreme"])
@pytest.mark.parametrize("dq, first", [(False, 0), (True, 0), (8, _dq.START_8)])
def test_row_reference_kernels_match_reference_bit_for_bit(kind, dq, first):
    from nnc_fl._rowref import MIN_EQUAL, choose_refs, decode_rows, encode_rows

    rng = np.random.default_rng(41 + bool(dq) + len(kind))
    for rows, cols in [(2, 1), (9, 7), (40, 12)]:
        ks = _repeating_rows(rng, rows, cols, kind)
        refs = choose_refs(ks, cols, 4, MIN_EQUAL)
        assert refs[0] == 0 and all(0 <= d <= r for r, d in enumerate(refs))
        payload = encode_rows(ks, refs, cols, 2, bool(dq), first).tobytes()
        assert payload == reference.encode_levels(ks.tolist(), cols, 2, dq=dq, refs=refs.tolist())
        expected = dq_levels(ks, first) if dq else ks
        assert reference.decode_levels(payload, ks.size, cols, 2, dq=dq, rows=True) == expected.tolist()
        decoded, status = decode_rows(np.frombuffer(payload, np.uint8), ks.size, cols, 2, bool(dq), first)
        assert status == OK and np.array_equal(decoded, expected)
    assert refs.any()


def test_row_references_find_exact_copies_at_any_distance_and_save_bytes():
    from nnc_fl._rowref import choose_refs, encode_rows

    rng = np.random.default_rng(42)
    ks = _levels(rng, 200 * 50, "laplace").reshape(200, 50)
    ks[150] = ks[3]
    ks[151] = ks[100]
    ks[151, :5] += 1
    refs = choose_refs(ks.ravel(), 50, 60, 0.6)
    assert refs[150] == 147 and refs[151] == 51  # the copy by hash, the near-copy in the window
    assert len(encode_rows(ks.ravel(), refs, 50, 0, False)) < len(encode_levels(ks.ravel(), 50, 0)) - 20


def test_row_reference_decoder_reports_bad_references_and_levels():
    from nnc_fl._rowref import BAD_REF, decode_rows

    payload = np.frombuffer(reference.encode_levels([0] * 8, 2, 0, refs=[0, 0, 0, 4]), np.uint8)
    _, status = decode_rows(payload, 8, 2, 0, False)  # row 3 references "row -1"
    assert status == BAD_REF
    for prefix, low in [(63, None), (61, (1 << 61) - 11)]:
        _, status = decode_rows(_one_level_payload(prefix, low), 1, 1, 0, False)
        assert status == BAD_LEVEL
    _, status = decode_rows(_one_index_payload(60, (1 << 61) - 11 - (1 << 60)), 1, 1, 0, True)
    assert status == BAD_LEVEL
    ks = np.arange(-500, 500, dtype=np.int64)
    from nnc_fl._rowref import encode_rows

    payload = encode_rows(ks, np.zeros(10, np.int64), 100, 0, False)
    _, status = decode_rows(payload[: len(payload) // 3], ks.size, 100, 0, False)
    assert status != OK


# --- temporal contexts (tools bit 5) --------------------------------------------------------------


def _reference_classes(rng, levels):
    """Reference classes that agree with ``levels`` more often than not, as consecutive updates do."""
    t = np.clip(np.sign(levels) * rng.integers(0, 3, size=levels.size), -2, 2)
    flip = rng.random(levels.size) < 0.3
    t[flip] = rng.integers(-2, 3, size=int(flip.sum()))
    return t.astype(np.int8)


@pytest.mark.parametrize("egctx", [False, True])
@pytest.mark.parametrize("kind", ["laplace", "sparse", "large", "extreme", "wide"])
@pytest.mark.parametrize("rate_index", [0, 3])
def test_temporal_kernel_matches_reference_bit_for_bit(kind, rate_index, egctx):
    rng = np.random.default_rng(rate_index * 5 + len(kind))
    for n, cols in [(1, 1), (60, 12), (333, 37)]:
        levels = _levels(rng, n, kind)
        tref = _reference_classes(rng, levels)
        fast = encode_levels(levels, cols, rate_index, egctx, tref).tobytes()
        slow = reference.encode_levels(levels.tolist(), cols, rate_index, egctx=egctx, tref=tref.tolist())
        assert fast == slow
        assert reference.decode_levels(slow, n, cols, rate_index, egctx=egctx, tref=tref.tolist()) == levels.tolist()
        decoded, status = decode_levels(np.frombuffer(fast, np.uint8), n, cols, rate_index, egctx, tref)
        assert status == OK
        np.testing.assert_array_equal(decoded, levels)
        values = np.empty(n)
        status, top = decode_values(np.frombuffer(fast, np.uint8), cols, rate_index, egctx, 0.25, values, tref)
        assert status == OK and top == np.abs(levels).max()
        assert values.tobytes() == dequantise(levels, 0.25).tobytes()


def test_temporal_contexts_pay_when_the_reference_predicts_and_cost_nothing_when_it_is_zero():
    rng = np.random.default_rng(5)
    levels = _levels(rng, 20000, "sparse")
    plain = encode_levels(levels, 100, 0, False).tobytes()
    assert len(encode_levels(levels, 100, 0, False, _reference_classes(rng, levels))) < 0.95 * len(plain)
    # class 0 everywhere keeps the usual contexts: the same bytes
    assert encode_levels(levels, 100, 0, False, np.zeros(levels.size, np.int8)).tobytes() == plain
    # a decoder given other classes does not get the levels back (the stream names its reference;
    # negated classes would only relabel the sign contexts, so the other classes are shifted ones)
    tref = _reference_classes(rng, levels)
    payload = encode_levels(levels, 100, 0, False, tref)
    decoded, _ = decode_levels(payload, levels.size, 100, 0, False, np.roll(tref, 1))
    assert not np.array_equal(decoded, levels)


def test_temporal_classes_round_half_to_even_and_clip():
    ref = np.array([0.0, -0.0, 0.49, 0.5, 0.51, 1.5, 2.5, -2.5, -0.5, 3.0, -1e30, 1e-300, 7.0], np.float64)
    step = 1.0
    expected = [0, 0, 0, 0, 1, 2, 2, -2, 0, 2, -2, 0, 2]
    assert temporal_classes(ref, step, np.empty(ref.size, np.int8)).tolist() == expected
    assert [reference.temporal_class(v, step) for v in ref] == expected
    rng = np.random.default_rng(3)
    x = (rng.normal(size=5000) * 0.03).astype(np.float32)
    got = temporal_classes(x, 0.0125, np.empty(x.size, np.int8))
    assert got.tolist() == [reference.temporal_class(float(v), 0.0125) for v in x]


def test_golden_temporal_payload():
    tref = np.array([0, 1, -1, 2, -2, 0, 1, 1] * 8, np.int8)
    payload = encode_levels(GOLDEN_LEVELS, 4, 0, False, tref).tobytes()
    assert hashlib.sha256(payload).hexdigest() == GOLDEN_TEMPORAL
    assert reference.encode_levels(GOLDEN_LEVELS.tolist(), 4, 0, tref=tref.tolist()) == payload


GOLDEN_TEMPORAL = "781596468146c5675408156dfbf58622107c4002b3b371f1fc094cc833a4e8b7"


def test_golden_row_reference_payload():
    from nnc_fl._rowref import encode_rows

    refs = np.array([0, 1, 0, 3, 2, 0, 0, 4, 1, 0, 2, 3, 0, 1, 5, 0], np.int64)
    payload = encode_rows(GOLDEN_LEVELS, refs, 4, 0, False).tobytes()
    assert hashlib.sha256(payload).hexdigest() == GOLDEN_ROWS
    assert reference.encode_levels(GOLDEN_LEVELS.tolist(), 4, 0, refs=refs.tolist()) == payload


GOLDEN_ROWS = "cc2b29a935e889e97168980d88a78c8d725f48f27b660d04f8f9217c675fd65b"


# --- Lossless float coding (mode float-lossless) ----------------------------------------------------

FLOAT_DTYPES = [np.float16, np.float32, np.float64]


def _floats(rng, n, kind, dtype):
    """Test values of one ``kind``; every kind is finite and exercises a part of the float coder."""
    info = np.finfo(dtype)
    if kind == "normal":  # trained-weight-like
        return (rng.normal(size=n) * 0.05).astype(dtype)
    if kind == "uniform":  # initial weights: a + (b - a) * u with 24-bit u, low bits of small values zero
        u = (rng.integers(0, 1 << 24, size=n) * 2.0**-24).astype(np.float32)
        return (np.float32(-0.03) + np.float32(0.06) * u).astype(dtype)
    if kind == "special":  # zeros of both signs, subnormals, extremes of the dtype
        pool = [0.0, -0.0, 1.0, -1.0, info.max, -info.max, info.tiny, info.smallest_subnormal,
                -info.smallest_subnormal, info.tiny / 3, 0.1]
        return rng.choice(np.array(pool, dtype), size=n)
    if kind == "wide":  # exponent distances beyond the unary bins (escape)
        top = np.log10(float(info.max)) - 1
        x = 10.0 ** rng.uniform(np.log10(float(info.smallest_subnormal)), top, size=n)
        return (x * rng.choice([-1, 1], size=n)).astype(dtype)
    if kind == "rounded":  # fewer mantissa bits than the dtype's (tz > 0)
        return (rng.normal(size=n) * 3).astype(np.float16).astype(dtype)
    if kind == "subnormal":  # top exponent 0: below the unary bins
        return (rng.integers(-50, 50, size=n) * info.smallest_subnormal).astype(dtype)
    if kind == "pow2":  # no mantissa bits at all (tz = all of them)
        return (2.0 ** rng.integers(-10, 10, size=n) * rng.choice([-1, 1], size=n)).astype(dtype)
    raise ValueError(kind)


FLOAT_KINDS = ["normal", "uniform", "special", "wide", "rounded", "subnormal", "pow2"]


@pytest.mark.parametrize("kind", FLOAT_KINDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_float_kernels_match_reference_bit_for_bit(kind, dtype):
    rng = np.random.default_rng(FLOAT_KINDS.index(kind) * 3 + FLOAT_DTYPES.index(dtype))
    for n in (1, 2, 257):
        x = _floats(rng, n, kind, dtype)
        patterns = x.view(f"u{x.itemsize}").tolist()
        for full in (False, True):
            fast = encode_float_payload(x, full)
            slow = reference.encode_floats(patterns, x.itemsize, full)
            assert fast == slow, (n, full)
            assert reference.decode_floats(slow, n, x.itemsize) == patterns
            assert decode_float_payload(fast, x.dtype, n, "x").tobytes() == x.tobytes()
        assert encode_float_payload(x) in (encode_float_payload(x, False), encode_float_payload(x, True))


def test_float_reference_constants_equal_the_kernels():
    from nnc_fl import _floatcoder as fc

    kernels = {
        "FLOAT_FIELDS": fc.FLOAT_FIELDS,
        "FLOAT_HEADER_BYTES": fc.HEADER_BYTES,
        "FLOAT_FLAG_FULL": fc.FLAG_FULL,
        "FLOAT_UNARY_BINS": fc.UNARY_BINS,
        "FLOAT_TREE_BITS": fc.TREE_BITS,
        "FLOAT_CLASSES": fc.CLASSES,
        "FLOAT_RATES": fc.RATES,
        "FLOAT_LOW_RATES": fc.LOW_RATES,
        "FLOAT_SIGN_CTX": fc.SIGN_CTX,
        "FLOAT_EXP_CTX": fc.EXP_CTX,
        "FLOAT_TREE_CTX": fc.TREE_CTX,
        "FLOAT_ESC_CTX": fc.ESC_CTX,
    }
    for name, value in kernels.items():
        assert getattr(reference, name) == value, name


def test_float_profiles_where_they_pay():
    rng = np.random.default_rng(8)
    trained = _floats(rng, 4000, "normal", np.float32)
    initial = _floats(rng, 4000, "uniform", np.float32)
    # near-random low mantissa bits: the fast profile (raw low bits), chosen without trying the other
    assert encode_float_payload(trained)[1] == 0
    assert len(encode_float_payload(trained, False)) < len(encode_float_payload(trained, True))
    # low bits of small initial weights are zeros: the full profile codes them in context, and wins
    assert encode_float_payload(initial)[1] == FLOAT_FLAG_FULL
    assert len(encode_float_payload(initial, True)) < 0.97 * len(encode_float_payload(initial, False))
    # zero low mantissa bits are not sent at all
    assert encode_float_payload(trained.astype(np.float16).astype(np.float32))[0] == 13
    assert len(encode_float_payload(trained)) < 0.85 * trained.nbytes


def test_float_encoder_refuses_non_finite_values():
    for bad in (np.inf, -np.inf, np.nan):
        with pytest.raises(ValueError, match="NaN or Inf"):
            encode_float_payload(np.array([1.0, bad], np.float32))


def test_float_decoder_reads_at_most_four_bytes_past_the_coded_part():
    rng = np.random.default_rng(4)
    worst = 0
    for trial in range(63):
        dtype = FLOAT_DTYPES[trial % 3]
        x = _floats(rng, int(rng.integers(1, 120)), FLOAT_KINDS[trial % len(FLOAT_KINDS)], dtype)
        for full in (False, True):
            payload = encode_float_payload(x, full)
            stats = {}
            reference.decode_floats(payload, x.size, x.itemsize, stats)
            low = _float_low_bits(x.itemsize, payload[0])
            coded = len(payload) - 4 - (0 if payload[1] else (x.size * low + 7) // 8)
            worst = max(worst, stats["bytes_read"] - coded)
    assert worst <= 4 <= FLOAT_READ_SLACK


def _float_low_bits(itemsize, tz):
    """Mantissa bits below the tree bits, for ``tz`` dropped bits (FORMAT.md: ``low``)."""
    mp = reference.FLOAT_FIELDS[itemsize][1] - tz
    return mp - min(reference.FLOAT_TREE_BITS, mp)


def _float_coded_part(bins):
    """A coded part of hand-chosen bins ``(context, bit)`` in the float contexts at the main rates."""
    model, enc = reference._FloatModel(reference.FLOAT_ESC_CTX + 64), reference.RangeEncoder()
    for c, bit in bins:
        enc.bin(bit, model.p1(c))
        model.update(c, bit, reference.FLOAT_RATES)
    return np.frombuffer(enc.finish(), np.uint8)


@pytest.mark.parametrize(
    "e_top, x, status", [(25, 5, FLOAT_OK), (25, 6, FLOAT_BAD_EXPONENT), (19, 0, FLOAT_BAD_EXPONENT)]
)
def test_float_exponents_below_zero_are_reported(e_top, x, status):
    # one float32 value, tz = 23 (no mantissa bits): sign, 20 unary ones, then x = d - 20 down the
    # escape tree, in bitlength(e_top - 20) bins
    unary = [(reference.FLOAT_EXP_CTX + k, 1) for k in range(reference.FLOAT_UNARY_BINS)]
    esc_bits = max(e_top - reference.FLOAT_UNARY_BINS, 0).bit_length()
    escape, node = [], 1
    for j in range(esc_bits):
        bit = (x >> (esc_bits - 1 - j)) & 1
        escape.append((reference.FLOAT_ESC_CTX + node - 1, bit))
        node = 2 * node + bit
    coded = _float_coded_part([(reference.FLOAT_SIGN_CTX, 1), *unary, *escape])
    out, got = decode_floats(coded, np.zeros(0, np.uint8), 1, 4, 23, 23, e_top, False)
    assert got == status
    if status == FLOAT_OK:  # d = 25 = e_top: exponent 0, sign 1, no mantissa: -0.0
        assert out.tobytes() == np.array([-0.0], "<f4").tobytes()


def test_float_truncated_coded_part_is_reported():
    x = _floats(np.random.default_rng(5), 1000, "wide", np.float32)
    payload = np.frombuffer(encode_float_payload(x, True), np.uint8)
    tz, e_top = int(payload[0]), int(payload[2]) | int(payload[3]) << 8
    _, status = decode_floats(payload[4:], np.zeros(0, np.uint8), x.size, 4, 23, tz, e_top, True)
    assert status == FLOAT_OK
    _, status = decode_floats(payload[4:40], np.zeros(0, np.uint8), x.size, 4, 23, tz, e_top, True)
    assert status == FLOAT_SHORT_PAYLOAD


# Golden float-lossless payloads: any change of these bytes is a format change.
GOLDEN_FLOATS = np.array([0.5, -0.25, 0.0, -0.0, 1e-3, 3.0, -7.5e-5, 1e-40, 0.1, -0.1, 2.0**-10, 12.0], np.float32)


def test_golden_float_payloads():
    fast = encode_float_payload(GOLDEN_FLOATS, False)
    full = encode_float_payload(GOLDEN_FLOATS, True)
    assert fast.hex() == (
        "00008200870493400315e21c74f74e0b07f1b000000000000000000000f02631000080545217b608cdccac9999010000000000"
    )
    assert full.hex() == (
        "0001820087ffbff8287ffff0d000c83fffe9c494080159315979bfdb30fdd2a3867df51562d466d8d70c4c1efec8c1b0"
    )
    patterns = GOLDEN_FLOATS.view(np.uint32).tolist()
    assert reference.encode_floats(patterns, 4, False) == fast
    assert reference.encode_floats(patterns, 4, True) == full


# --- grid test and sum of squares (nnc_fl.steps) ---------------------------------------------------


def test_sum_squares_matches_numpy():
    rng = np.random.default_rng(51)
    for dtype in (np.float32, np.float64):
        x = (rng.normal(size=1001) * 3).astype(dtype)
        assert sum_squares(x) == pytest.approx(float(np.sum(x.astype(np.float64) ** 2)), rel=1e-12)
    assert sum_squares(np.zeros(0, np.float32)) == 0.0


def test_grid_levels_or_gives_the_shared_power_of_two():
    g = 2.0**-7
    x = (np.array([4, -12, 20, 0]) * g).astype(np.float32)
    assert grid_levels_or(x, 1 / g) == 4 | 12 | 20
    assert grid_levels_or(np.zeros(0, np.float64), 1 / g) == 0
    for bad in (np.nan, np.inf, 2.0**70):
        z = x.astype(np.float64)
        z[1] = bad
        assert grid_levels_or(z, 1 / g) == -1
    from nnc_fl.steps import coarsest_grid

    assert coarsest_grid(x.reshape(2, 2), g) == 4 * g
    assert coarsest_grid(np.array([3, 8], np.float32) * g, g) == g
    assert coarsest_grid(np.zeros(5, np.float32), g) == coarsest_grid(np.zeros(0, np.float32), g) == g
    assert coarsest_grid(x.astype(np.float16), g) == 4 * g  # widened exactly
    with pytest.raises(ValueError, match="power of two"):
        coarsest_grid(x, 0.3)
    with pytest.raises(TypeError, match="float tensor"):
        coarsest_grid(np.arange(3), g)
    with pytest.raises(ValueError, match="not finite"):
        coarsest_grid(np.array([np.nan], np.float32), g)


def test_coarsest_multiple_gives_the_levels_common_divisor():
    from nnc_fl.steps import coarsest_grid, coarsest_multiple

    g = 2.0**-7
    x = (np.array([5, -15, 20, 0]) * g).astype(np.float32)  # an odd common step: 5 grid steps
    assert coarsest_multiple(x.reshape(2, 2), g) == 5 * g
    assert coarsest_grid(x, g) == g  # the power-of-two factor alone
    assert coarsest_multiple((np.array([12, -8]) * g).astype(np.float64), g) == 4 * g
    assert coarsest_multiple(np.array([3, 8], np.float32) * g, g) == g
    assert coarsest_multiple(np.zeros(5, np.float32), g) == coarsest_multiple(np.zeros(0, np.float32), g) == g
    assert coarsest_multiple(x.astype(np.float16), g) == 5 * g
    with pytest.raises(ValueError, match="power of two"):
        coarsest_multiple(x, 0.3)
    with pytest.raises(TypeError, match="float tensor"):
        coarsest_multiple(np.arange(3), g)
    for bad in (np.nan, np.inf, 2.0**60, 0.5 * g):
        z = x.astype(np.float64)
        z[1] = bad
        with pytest.raises(ValueError, match="not on the grid"):
            coarsest_multiple(z, g)


def test_on_grid_accepts_exact_multiples_within_range_only():
    g = 2.0**-7
    x = (np.arange(-50, 50) * g).astype(np.float32)
    assert on_grid(x, 1 / g, 64.0)  # |x / g| <= 50
    assert not on_grid(x, 1 / g, 49.0)  # out of range
    y = x.copy()
    y[17] += np.float32(g / 4)
    assert not on_grid(y, 1 / g, 64.0)  # off the grid
    for bad in (np.nan, np.inf):
        z = x.copy()
        z[3] = bad
        assert not on_grid(z, 1 / g, 1e30)
    assert on_grid(np.zeros(0, np.float64), 1 / g, 1.0)
    from nnc_fl.steps import on_grid as checked

    assert checked(x.astype(np.float16).reshape(10, 10), g, 64.0)  # widened exactly
    with pytest.raises(ValueError, match="power of two"):
        checked(x, 0.3, 64.0)
    with pytest.raises(TypeError, match="float tensor"):
        checked(np.arange(4), g, 64.0)


# --- sparse / ternary kernels (nnc_fl/_varint.py) and the zstd block walk (nnc_fl/_zstdframe.py) -------


def test_varint_kernel_decodes_what_the_encoder_writes_and_reports_each_error():
    from nnc_fl.payloads import varint_encode

    values = np.array([0, 1, 127, 128, 300, 2**21, 2**35 - 1, 2**63 - 1], dtype=np.int64)
    buf = np.frombuffer(b"\xee" + varint_encode(values) + b"\xee", np.uint8)  # decoded from 1 to size - 1
    out = np.zeros(values.size, np.int64)
    assert _varint.decode_varints(buf, 1, buf.size - 1, values.size, 9, out) == _varint.OK
    assert np.array_equal(out, values)
    one = np.zeros(1, np.int64)
    cases = [
        (b"\x80", 1, 9, _varint.SHORT),  # runs past the end
        (b"", 1, 9, _varint.SHORT),  # no bytes for a value
        (b"\x80\x80\x01", 1, 2, _varint.TOO_LONG),
        (b"\x81\x00", 1, 9, _varint.OVERLONG),
        (b"\x01\x02", 1, 9, _varint.EXTRA),
        (b"", 0, 9, _varint.OK),
    ]
    for data, count, max_bytes, status in cases:
        b = np.frombuffer(data, np.uint8)
        assert _varint.decode_varints(b, 0, b.size, count, max_bytes, one) == status, data


def test_gap_kernel_scatters_values_at_their_positions_and_never_past_the_tensor():
    n = 300
    positions = np.array([0, 5, 6, 200, 299])
    from nnc_fl.payloads import varint_encode

    gaps = np.frombuffer(varint_encode(np.diff(positions, prepend=-1) - 1), np.uint8)
    values = np.arange(1, positions.size + 1, dtype=np.float32)
    for dtype in (np.float32, np.float64, np.uint16):
        out = np.zeros(n, dtype)
        assert _varint.scatter_gaps(gaps, 0, gaps.size, positions.size, 2, n, values.astype(dtype), out) == _varint.OK
        expect = np.zeros(n, dtype)
        expect[positions] = values
        assert np.array_equal(out, expect)
    out = np.zeros(n, np.float32)
    assert _varint.scatter_gaps(gaps, 0, gaps.size, positions.size, 2, 299, values, out[:299]) == _varint.PAST_END
    assert _varint.scatter_gaps(gaps, 0, gaps.size - 1, positions.size, 2, n, values, out) == _varint.SHORT
    assert _varint.scatter_gaps(gaps, 0, gaps.size, positions.size - 1, 2, n, values, out) == _varint.EXTRA
    huge = np.frombuffer(varint_encode(np.array([2**63 - 1])), np.uint8)  # a gap that would overflow int64
    assert _varint.scatter_gaps(huge, 0, huge.size, 1, 9, 2**62, values, out) == _varint.PAST_END


def test_sign_kernel_and_finite_max_abs():
    positions = np.array([1, 3, 4, 8, 9, 10, 11, 12, 15], np.int64)
    signs = np.packbits(np.array([1, 0, 0, 1, 1, 0, 0, 0, 1], np.uint8))
    out = np.zeros(16, np.float32)
    _varint.scatter_signed(positions, signs, np.float32(0.5), np.float32(-0.5), out)
    expect = np.zeros(16, np.float32)
    expect[positions] = np.where(np.unpackbits(signs, count=9).astype(bool), -0.5, 0.5)
    assert np.array_equal(out, expect)
    assert _varint.finite_max_abs(np.array([1.0, -3.5, 2.0], np.float32)) == 3.5
    assert _varint.finite_max_abs(np.zeros(0, np.float32)) == 0.0
    for bad in (np.nan, np.inf, -np.inf):
        assert _varint.finite_max_abs(np.array([1.0, bad], np.float64)) == -1.0


def test_zstd_block_walk_finds_the_end_of_one_frame_without_decompressing():
    import zstandard

    rng = np.random.default_rng(5)
    plain = rng.integers(0, 4, 300_000, dtype=np.uint8).tobytes()  # several compressed blocks
    for frame in (zstandard.ZstdCompressor(level=3, write_checksum=False).compress(plain),
                  zstandard.ZstdCompressor(level=1).compress(b"\0" * 400_000),  # RLE blocks
                  zstandard.ZstdCompressor(level=1).compress(b"")):
        buf = np.frombuffer(frame, np.uint8)
        assert _zstdframe.blocks_end(buf, zstandard.frame_header_size(frame)) == buf.size

    def blocks(*headers):
        return np.frombuffer(b"".join(h.to_bytes(3, "little") for h in headers), np.uint8)

    raw_last = 1 | (0 << 1) | (2 << 3)
    assert _zstdframe.blocks_end(np.frombuffer(raw_last.to_bytes(3, "little") + b"ab", np.uint8), 0) == 5
    assert _zstdframe.blocks_end(np.frombuffer(raw_last.to_bytes(3, "little") + b"a", np.uint8), 0) == _zstdframe.SHORT
    assert _zstdframe.blocks_end(blocks(0 | (1 << 1) | (9 << 3))[:2], 0) == _zstdframe.SHORT
    assert _zstdframe.blocks_end(blocks(1 | (3 << 1)), 0) == _zstdframe.RESERVED
    assert _zstdframe.blocks_end(blocks(1 | (2 << 1) | ((_zstdframe.BLOCK_MAX + 1) << 3)), 0) == _zstdframe.TOO_BIG
    rle = (1 << 1 | 5 << 3).to_bytes(3, "little") + b"x" + (1 | 1 << 1 | 5 << 3).to_bytes(3, "little") + b"y"
    assert _zstdframe.blocks_end(np.frombuffer(rle, np.uint8), 0) == 8
