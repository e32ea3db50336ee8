"""Public codec API: encode / decode / decode_tensor / inspect.

Validates and converts inputs in Python, then calls the jitted kernels of ``_quantise`` and
``_levels``; the container layout lives in :mod:`nnc_fl.bitstream`, the payloads of the float modes
f16 / int8 / sparse / ternary (written by the baseline codecs of ``experiments/``) in
:mod:`nnc_fl.payloads`. One decoder reads every mode.
"""

from __future__ import annotations

import math
import numbers
import os
import statistics
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from . import bitstream as bs
from . import payloads
from ._dq import (
    MAX_DQ_INDEX,
    START_8,
    decode_levels_dq,
    decode_values_dq,
    dq_levels,
    encode_indices_dq,
    encode_levels_dq,
)
from ._floatcoder import decode_float_payload, encode_float_payload
from ._levels import (
    BAD_LEVEL,
    GT_FLAGS,
    MAX_LEVEL,
    SHORT_PAYLOAD,
    decode_levels,
    decode_values,
    eg_context_gain,
    encode_levels,
    encode_levels_rd,
    temporal_classes,
)
from ._quantise import NOT_FINITE, OK, dequantise, max_magnitude, quantise, sum_squares
from ._ratesearch import rate_costs
from ._rowref import BAD_REF, MIN_EQUAL, SEARCH, choose_refs, decode_rows, encode_rows
from .bitstream import DEFAULT_LIMITS, Limits, StreamInfo, TensorInfo
from .errors import FormatError, LimitError, SchemaError, TemporalReferenceError
from .rate import FINEST_OCTAVES, KEEP_WITHIN, check_keep_within, check_target_bytes, fit_budget
from .steps import (
    MAX_STEP,
    MIN_STEP,
    check_lossless_bits,
    check_rd_lambda,
    check_rel_step,
    check_rel_to,
    check_step_choice,
    resolve_step,
    round_up_mantissa,
    update_step,
)
from .temporal import digest_of, is_finite

#: Probability rate pair used when the encoder does not search (index into RATE_PAIRS).
DEFAULT_RATE_INDEX = 0
#: With ``threads=None``, streams of at least this many elements are coded and decoded in threads
#: (the kernels release the GIL), at most :data:`MAX_AUTO_THREADS` of them; smaller ones in one.
PARALLEL_ELEMENTS = 1 << 20
MAX_AUTO_THREADS = 4


def _thread_count(threads: int | None, elements: int) -> int:
    if threads is None:
        return 1 if elements < PARALLEL_ELEMENTS else max(1, min(os.cpu_count() or 1, MAX_AUTO_THREADS))
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    return threads


def _map_tensors(fn: Callable, items: Sequence, sizes: Sequence[int], threads: int) -> list:
    """``[fn(x) for x in items]``, in ``threads`` threads (largest first) when more than one; the
    first exception raised by ``fn`` (in item order) propagates."""
    if threads <= 1 or len(items) < 2:
        return [fn(x) for x in items]
    order = sorted(range(len(items)), key=lambda i: -sizes[i])
    with ThreadPoolExecutor(min(threads, len(items))) as pool:
        futures = {i: pool.submit(fn, items[i]) for i in order}
        return [futures[i].result() for i in range(len(items))]


def encode(
    tensors: Mapping[str, np.ndarray],
    *,
    step: float | Mapping[str, float] | None = None,
    qp: int | Mapping[str, int] | None = None,
    rel_step: float | None = None,
    rel_to: str = "tensor",
    rd_lambda: float = 0.0,
    lossless: Collection[str] = (),
    lossless_bits: int | None = None,
    float_lossless: bool = False,
    fingerprint: bytes | None = None,
    limits: Limits = DEFAULT_LIMITS,
    schema_bound: bool = False,
    dq: bool | int = False,
    rate_search: bool = False,
    row_refs: bool = False,
    grid: Mapping[str, float] | None = None,
    threads: int | None = None,
    return_decoded: bool = False,
    target_bytes: int | None = None,
    keep_steps: Mapping[str, float] | None = None,
    keep_within: float = KEEP_WITHIN,
    temporal_reference: Mapping[str, np.ndarray] | None = None,
) -> bytes | tuple[bytes, dict[str, np.ndarray]]:
    """Code named tensors into one stream (self-contained unless ``schema_bound``).

    Parameters
    ----------
    tensors
        Mapping name -> array (any shape, including 0-d and empty). Float tensors (float16/32/64)
        are quantised; integer and bool tensors are coded exactly.
    step, qp
        Quantisation step for float tensors, as a number, or as NNC QP (see
        :func:`nnc_fl.steps.qp_to_step`); either may be a mapping name -> value, and names missing
        from the mapping use the default policy. With neither, each float tensor gets the default
        policy of :func:`nnc_fl.steps.default_step` (a power of two near rms / 8, finer for 1-d).
        The step is carried as float32.
    rel_step
        Instead of ``step``/``qp``: each float tensor's step is ``rel_step`` times its RMS (divided
        by 4 for 0-d/1-d tensors) -- a rate that follows the update's scale, as FL deltas shrink.
    rel_to
        With ``rel_step``: ``"tensor"`` (the default) as above, or ``"update"``: one step for every
        quantised float tensor, ``rel_step`` times the RMS of all of them together (per-name
        ``step``/``qp`` mappings still override). One step everywhere minimises the update's total
        squared error for its rate; per-tensor steps spend bits on tensors whose changes are small.
    rd_lambda
        Rate-distortion quantisation: with ``rd_lambda > 0`` a value rounded up may be coded one
        level lower where ``(error / step)**2 + rd_lambda * bits`` is smaller (bits estimated from
        the coder's adaptive contexts). The error then stays below one step instead of half a step;
        0 (the default) is plain rounding. Decoders need nothing: the stream format is the same.
    lossless
        Names of float tensors to code exactly instead of quantising.
    lossless_bits
        ``None`` (the default) codes the ``lossless`` tensors bit for bit. A number ``b`` first
        rounds each of their finite values towards +inf to ``b`` mantissa bits
        (:func:`nnc_fl.steps.round_up_mantissa`): less than ``2**-b`` of the value above it, never
        below it, so a statistic ``old + delta`` that is >= 0 (a running variance) stays >= 0;
        with ``float_lossless`` the dropped bits are not sent (BatchNorm statistics deltas at
        ``b=8``: ~13 instead of ~27 bits a value). Keyframes need the exact values: leave it
        ``None`` there.
    float_lossless
        Code those exact float tensors in mode float-lossless (sign, exponent and mantissa
        entropy coded; about 17 % below the raw bytes for trained fp32 models, FORMAT.md) where
        that is smaller than raw; ``False`` (the default) stores them raw, as decoders that
        predate the mode expect.
    fingerprint
        Optional base-model fingerprint (1..64 bytes) bound into the stream.
    limits
        The limits the stream's decoders enforce: a stream they would refuse is not written.
    grid
        Anchor grid, name -> a power of two: the step of such a (float, not lossless) tensor is
        rounded to the nearest power-of-two multiple of it, at least the grid itself, so a model
        whose values lie on the grid stays on it when it adds the decoded tensor (exactly, in its
        own dtype, while its values stay below 2**22 grid steps).
    dq
        Dependent (trellis-coded) quantisation (FORMAT.md, tools bit 2): two quantisers of
        spacing ``2 step`` (even and odd multiples of the step) switched by a 4-state machine
        (``True`` or ``4``) or NNC's 8-state machine (``8``, tools bit 7: about 2 % less
        distortion at a given step, most useful at 1-4 bits/param; its search takes ~1.5x as
        long),
        the levels chosen by a Viterbi search minimising ``(error / (2 step))**2 + rd_lambda *
        bits`` (bits from the adaptive contexts; ``rd_lambda=0``: distortion only). At equal
        RMSE it needs ~3 % fewer bytes than ``rd_lambda`` alone on dense deltas (GRU,
        transformer); errors stay below two steps. Use about half the step of plain coding
        for the same RMSE. Decoders need nothing (the tools byte signals it).
    rate_search
        Per tensor, pick the probability adaptation rate pair (tools bits 0-1) whose estimated
        code length (over the tensor's first 65 536 elements, whole rows) is smallest, instead of
        pair 0; ~1 % smaller on GRU / transformer / tiny MLP deltas, 0.2-0.6 % on others.
    row_refs
        Row references (FORMAT.md, tools bit 3): a row of a tensor with two or more dimensions
        may reference an earlier row; in it, each integer equal to the referenced row's costs
        one flag. The encoder searches earlier rows (exact duplicates at any distance, others
        within a bounded window) and uses a reference where most integers agree. Pays on small
        dense layers with repeated units (dead or duplicated neurons).
    schema_bound
        Write the compact, schema-bound table (FORMAT.md, flag bit 2): names, dtypes and shapes
        are referenced by a 4-byte digest of the tensors' schema instead of repeated, steps are
        bfloat16 (each tensor's step is rounded to the nearest one) and one CRC covers all
        payloads -- about 5-7 bytes per tensor instead of ~20 + name. Decoding then needs the
        schema: ``decode(data, expect=...)`` with the same names, shapes and dtypes in the same
        order (both FL sides know the base model's); without it the decoder raises
        :class:`SchemaError`.
    threads
        Tensors are coded independently, in this many threads (the stream's bytes do not depend
        on it); ``None``: one for streams below :data:`PARALLEL_ELEMENTS` elements, else up to
        :data:`MAX_AUTO_THREADS` (the CPU count).
    return_decoded
        Also return what :func:`decode` gives for the stream -- the reconstruction, built from the
        encoder's own levels without decoding the payloads (an encoder that needs it, for error
        feedback or to apply an increment it sends, saves the decoding pass).
    target_bytes
        Rate control (:mod:`nnc_fl.rate`): a budget for the whole stream, in bytes. Every
        quantised tensor's step (from ``step``, ``qp``, ``rel_step`` or the default policy) is
        scaled by one common factor, searched on the exact coded size, and the stream of the finest
        factor found within the budget is returned (at most 1 % below it, unless the factor is
        pinned first). A budget below the smallest stream (every quantised tensor zero) gives that
        stream; one above the stream at ``2**-16`` times the steps gives that one. Exact tensors
        are not affected. The stream format is the same (the steps are in the table as always).
        With ``grid``, steps are integer multiples of the grid (not only power-of-two ones: a
        model on the grid stays on it all the same), at least the grid itself; near it the size
        moves in coarse jumps and may land further below the budget.
    keep_steps, keep_within
        With ``target_bytes``: the steps of a previous stream (name -> step, e.g. from
        :func:`inspect`), tried first; the stream at exactly those steps is kept if its size lies
        within ``keep_within`` (a fraction, default :data:`KEEP_WITHIN`) below the budget, so
        consecutive streams of a sequence share their steps while the budget allows (a sum of
        such streams then stays on their common step: see ``strategies.server_model``'s catch-up
        increments). A quantised tensor without a step there takes the median ratio of the others'
        kept steps to their reference steps. Otherwise the search starts there and aims at the
        middle of that window, ``(1 - keep_within / 2)`` times the budget, so that the next
        streams at the new steps may grow or shrink a little and still keep them.
    temporal_reference
        Temporal contexts (FORMAT.md, tools bit 5): a mapping name -> float32/64 array that the
        decoder holds too, typically the previous update of a sequence (in FL, the last global
        increment, which server and clients apply alike). A quantised float32/64 tensor coded
        plainly (not ``dq``, not by row references) whose name is in it, with the same shape,
        takes its contexts from the co-located reference value in units of the tensor's step
        (-2 .. 2): consecutive FedAvg increments agree in sign and size where the model keeps
        moving (~5 % smaller increments of the UC10 CNN against the one before; updates 0-3 %,
        README). Each such tensor is coded with and without the reference and the smaller kept;
        the stream names the reference by its 8-byte digest
        (:func:`nnc_fl.fingerprint.temporal_digest`) if that still saves bytes, and ``decode``
        then needs the same mapping.

    Returns
    -------
    bytes
        The stream; see FORMAT.md. With ``return_decoded``: ``(stream, decoded)``.

    Raises
    ------
    ValueError
        A tensor holds NaN/Inf, has an unsupported dtype, or its step would give levels beyond
        2**62; the stream would exceed ``limits``. The message names the tensor or the limit.

    A reconstruction never leaves the dtype's finite range: where rounding at the step would
    overflow it (float16 values near 65504 with a coarse step), the tensor's step is halved until
    it does not, which keeps every error within half a step.
    """
    rd_lambda = check_rd_lambda(rd_lambda)
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping name -> array, got {type(tensors).__name__}")
    lossless = set(lossless)
    unknown = lossless - set(tensors)
    if unknown:
        raise ValueError(f"lossless names not among the tensors: {sorted(unknown)}")
    bits = check_lossless_bits(lossless_bits)
    if bits is not None:
        tensors = {n: round_up_mantissa(v, bits) if n in lossless else v for n, v in tensors.items()}
    check_step_choice(step, qp, rel_step)
    if check_rel_to(rel_to, rel_step) == "update":
        step, rel_step = _update_steps(tensors, step, qp, check_rel_step(rel_step), lossless, limits), None
    if not isinstance(float_lossless, bool):
        raise TypeError(f"float_lossless must be a bool, got {float_lossless!r}")
    grid = dict(grid or {})
    for name, g in grid.items():
        if not (g > 0 and math.isfinite(g) and math.frexp(g)[0] == 0.5):
            raise ValueError(f"grid step of tensor {name!r} must be a power of two, got {g!r}")
    if temporal_reference is not None and not isinstance(temporal_reference, Mapping):
        raise TypeError(f"temporal_reference must be a mapping name -> array, got {type(temporal_reference).__name__}")
    opts = _Options(rd_lambda=rd_lambda, bf16_steps=bool(schema_bound), dq=_dq_states(dq),
        rate_search=bool(rate_search), row_refs=bool(row_refs), float_lossless=float_lossless,
        temporal=temporal_reference,
    )
    if not isinstance(return_decoded, bool):
        raise TypeError(f"return_decoded must be a bool, got {return_decoded!r}")
    items = list(tensors.items())
    sizes = [int(np.size(v)) for _, v in items]
    workers = _thread_count(threads, sum(sizes))
    if target_bytes is not None:
        keep = _check_keep_steps(keep_steps, keep_within)
        return _encode_to_budget(
            items, check_target_bytes(target_bytes), step, qp, rel_step, lossless, fingerprint, limits, opts, grid,
            bool(schema_bound), workers, return_decoded, keep,
        )
    check_keep_within(keep_within)  # bad values are refused without a budget too
    if keep_steps is not None:
        raise ValueError("keep_steps applies to rate control only: give target_bytes too")

    def one(item):
        name, value = item
        arr = _as_array(name, value, limits)
        return arr, _code_tensor(name, arr, step, qp, rel_step, name in lossless, opts, grid.get(name))

    results = _map_tensors(one, items, sizes, workers)
    coded = _settle_temporal([c for _, c in results])
    data = _write([record for record, _ in coded], fingerprint, limits, bool(schema_bound), opts)
    if return_decoded:
        pairs = zip(results, coded, strict=True)
        return data, {record.name: _reconstruction(record, arr, levels) for (arr, _), (record, levels) in pairs}
    return data


def _write(records: list[bs.TensorRecord], fingerprint, limits: Limits, schema_bound: bool, opts) -> bytes:
    """The stream of ``records``, naming the temporal reference if a record's contexts use it."""
    temporal = any(r.tools & bs.TOOL_TEMPORAL for r in records)
    digest = digest_of(opts.temporal) if temporal else None
    return bs.write_stream(records, fingerprint, limits=limits, schema_bound=schema_bound, temporal_digest=digest)


def _update_steps(tensors, step, qp, rel_step: float, lossless, limits) -> dict[str, float]:
    """``rel_to="update"``: per-name steps, one common step (:func:`nnc_fl.steps.update_step` over
    the float tensors it applies to) for every float tensor without a per-name ``step`` or ``qp``."""
    by_step = dict(step) if isinstance(step, Mapping) else {}
    by_qp = qp if isinstance(qp, Mapping) else {}
    arrays = {}
    for name, value in tensors.items():
        arr = _as_array(name, value, limits)  # what the coder will code (and refuse, if it must)
        if arr.dtype.kind == "f" and name not in lossless and by_step.get(name) is None and by_qp.get(name) is None:
            arrays[name] = arr
    return {**by_step, **dict.fromkeys(arrays, update_step(list(arrays.values()), rel_step))}


#: Rate control searches no coarser than the step at which every level of a tensor is zero (twice its
#: peak) times 2**COARSEST_MARGIN, and no finer than levels of 2**FINEST_LEVEL_BITS times the peak.
COARSEST_MARGIN, FINEST_LEVEL_BITS = 1.0, 40


def _check_keep_steps(keep_steps, keep_within) -> tuple[dict[str, float], float] | None:
    """``keep_steps`` as a dict of positive finite steps and ``keep_within`` in (0, 1), or ``None``."""
    within = check_keep_within(keep_within)
    if keep_steps is None:
        return None
    if not isinstance(keep_steps, Mapping):
        raise TypeError(f"keep_steps must be a mapping name -> step, got {type(keep_steps).__name__}")
    kept = {}
    for name, value in keep_steps.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) < math.inf:
            raise ValueError(f"keep_steps[{name!r}] must be a positive finite step, got {value!r}")
        kept[name] = float(value)
    return kept, within


def _kept_steps(reference: Mapping[str, tuple[float, float]], keep: Mapping[str, float]) -> dict[str, float] | None:
    """Per quantised tensor: its step in ``keep``, else its reference step times the median ratio
    of the kept steps to their reference steps; ``None`` if no tensor has a kept step or one of
    them is finer than the search goes (levels beyond ``2**FINEST_LEVEL_BITS``)."""
    ratios = sorted(keep[n] / s for n, (s, _) in reference.items() if n in keep)
    if not ratios:
        return None
    ratio = ratios[len(ratios) // 2]
    kept = {n: min(max(keep.get(n, s * ratio), MIN_STEP), MAX_STEP) for n, (s, _) in reference.items()}
    if any(peak > kept[n] * 2.0**FINEST_LEVEL_BITS for n, (_, peak) in reference.items()):
        return None  # finer than the search would go (levels beyond 2**40): search instead
    return kept


def _encode_to_budget(
    items, target, step, qp, rel_step, lossless, fingerprint, limits, opts, grid, schema_bound, workers,
    return_decoded, keep=None,
):
    """:func:`encode` with ``target_bytes``: one step multiplier ``2**e`` for every quantised tensor,
    searched by :func:`nnc_fl.rate.fit_budget` on the exact stream size (after trying the steps of
    ``keep = (steps, within)``, if given)."""
    arrays = [(name, _as_array(name, value, limits)) for name, value in items]
    reference: dict[str, tuple[float, float]] = {}  # quantised tensor -> (reference step, peak |x|)
    for name, arr in arrays:
        if arr.dtype.kind == "f" and name not in lossless and arr.size:
            peak = float(np.max(np.abs(arr)))
            if 0 < peak < math.inf:  # NaN/Inf tensors are refused by the coder (fixed below)
                reference[name] = (resolve_step(name, arr, step, qp, rel_step), peak)
    fixed = {  # coded once: exact, integer, all-zero (and non-finite: the coder raises) tensors
        name: _code_tensor(name, arr, step, qp, rel_step, name in lossless, opts, grid.get(name))
        for name, arr in arrays
        if name not in reference
    }
    varying = [(name, arr) for name, arr in arrays if name in reference]
    sizes = [arr.size for _, arr in varying]
    opts = replace(opts, grid_multiples=True)  # with a grid, steps n * grid: finer rate steps than powers of two

    def code(e: float):
        return code_at({n: min(max(s * 2.0**e, MIN_STEP), MAX_STEP) for n, (s, _) in reference.items()})

    def code_at(steps: dict[str, float]):
        coded = _map_tensors(
            lambda it: _code_tensor(it[0], it[1], steps, None, None, False, opts, grid.get(it[0])),
            varying, sizes, workers,
        )
        done = {**fixed, **{name: c for (name, _), c in zip(varying, coded, strict=True)}}
        ordered = _settle_temporal([done[name] for name, _ in arrays])
        data = _write([r for r, _ in ordered], fingerprint, limits, schema_bound, opts)
        return len(data), (data, ordered)

    kept = _kept_steps(reference, keep[0]) if keep is not None and reference else None
    result, start, aim = None, 0.0, target
    if kept is not None:
        size, at_kept = code_at(kept)
        if (1.0 - keep[1]) * target <= size <= target:
            result = at_kept
        else:  # search from where the kept steps are, for the middle of the window, so that the
            # next streams at the new steps may grow or shrink a little and still keep them
            start = statistics.median(math.log2(kept[n] / s) for n, (s, _) in reference.items())
            aim = max(1, math.floor((1.0 - keep[1] / 2) * target))
    if result is not None:
        data, ordered = result
    elif reference:
        hi = max(math.log2(2.0 * peak / s) for s, peak in reference.values()) + COARSEST_MARGIN
        lo = max(-FINEST_OCTAVES, max(math.log2(peak / s) for s, peak in reference.values()) - FINEST_LEVEL_BITS)
        hi = max(hi, lo)
        data, ordered = fit_budget(code, aim, lo, hi, min(max(start, lo), hi)).result
    else:  # nothing to scale: one coding
        data, ordered = code(0.0)[1]
    if not return_decoded:
        return data
    pairs = zip(arrays, ordered, strict=True)
    return data, {name: _reconstruction(rec, arr, levels) for (name, arr), (rec, levels) in pairs}


def _working_bytes(t: TensorInfo, plain: int) -> int:
    """Bytes decoding tensor ``t`` allocates besides its output, at most, for a payload whose plain
    layout has ``plain`` bytes (the zstd frame's declared content size, else the payload's length).
    A zstd plain payload is allocated whole; a plain payload is read where it lies."""
    n = t.numel
    unpacked = plain if t.zstd else 0
    if t.mode == bs.MODE_ZERO or t.mode == bs.MODE_FLOAT_LOSSLESS:  # decoded into its output
        return 0
    if t.mode in (bs.MODE_RAW, bs.MODE_F16):  # the plain bytes become the output in one cast
        return unpacked
    if t.mode == bs.MODE_INT8:  # float64 levels, scaled in place
        return unpacked + 8 * n
    if t.mode == bs.MODE_SPARSE:  # scattered by the gap kernel; float16 values cast first (5+ bytes each)
        return unpacked + (2 * min(n, plain // 5) if t.dtype.itemsize == 2 else 0)
    if t.mode == bs.MODE_TERNARY:  # int64 positions (each costs at least a Golomb bit and a sign bit)
        return unpacked + 8 * min(n, 4 * plain)
    if t.mode == bs.MODE_LOWRANK:  # float64 product, and one block of rows of it
        rows, cols = payloads.lowrank_view(t.shape)
        return unpacked + 8 * n + 8 * payloads.lowrank_block_rows(rows, cols) * cols
    return bs.WORK_BYTES_PER_ELEMENT * n  # quant and int: int64 levels, float64 values


def _plain_sizes(view: memoryview, tensors: Collection[TensorInfo]) -> list[int]:
    """Each tensor's plain payload size: every zstd frame's declared content size, read from its
    header (and bounded, :func:`bitstream.zstd_plain_size`) before any frame is decompressed."""
    sizes = []
    for t in tensors:
        if not t.zstd:
            sizes.append(t.length)
            continue
        frame = view[t.offset : t.offset + t.length]
        if t.crc32 is not None and zlib.crc32(frame) != t.crc32:  # (as _decode_one would say first)
            raise FormatError(f"tensor {t.name!r}: payload CRC mismatch (corrupted)")
        sizes.append(bs.zstd_plain_size(frame, t))
    return sizes


def decoding_memory(data: bytes | bytearray | memoryview, tensors: Collection[TensorInfo]) -> tuple[int, list[int]]:
    """``(outputs, working)``: the bytes of the decoded ``tensors`` of stream ``data`` and, per tensor,
    the most its decoding allocates besides (zstd plain buffers included, from the frames' headers).
    Decoding ``w`` tensors at once needs ``outputs`` + the ``w`` largest ``working``."""
    view = memoryview(data).cast("B")
    outputs = sum(t.numel * t.dtype.itemsize for t in tensors)
    return outputs, [_working_bytes(t, p) for t, p in zip(tensors, _plain_sizes(view, tensors), strict=True)]


def _check_memory(data, tensors: Collection[TensorInfo], limits: Limits, threads: int = 1) -> int:
    """Refuse (:class:`LimitError`) ``tensors`` if decoding them one at a time needs more than the
    memory budget; return how many (up to ``threads``) may decode at once within it."""
    outputs, working = decoding_memory(data, tensors)
    working = sorted(working, reverse=True)
    need = outputs + (working[0] if working else 0)
    if need > limits.max_decode_bytes:
        raise LimitError(
            f"decoding needs up to {need} bytes ({outputs} of output, {need - outputs} of working and zstd "
            f"buffers), above the memory budget of {limits.max_decode_bytes}"
        )
    while threads > 1 and outputs + sum(working[:threads]) > limits.max_decode_bytes:
        threads -= 1
    return threads


def _check_schema(info: StreamInfo, expect: Mapping[str, object]) -> None:
    """Refuse (:class:`SchemaError`) a table whose names, shapes or dtypes are not ``expect``'s."""
    names = [t.name for t in info.tensors]
    if set(names) != set(expect):
        missing = sorted(set(expect) - set(names))[:5]
        extra = sorted(set(names) - set(expect))[:5]
        raise SchemaError(f"tensor names differ (missing {missing}, unexpected {extra})")
    for t in info.tensors:
        ref = expect[t.name]
        shape, dtype = tuple(np.shape(ref)), np.dtype(getattr(ref, "dtype", None))
        if t.shape != shape:
            raise SchemaError(f"tensor {t.name!r} has shape {t.shape}, expected {shape}")
        if t.dtype.newbyteorder("=") != dtype.newbyteorder("="):
            raise SchemaError(f"tensor {t.name!r} has dtype {t.dtype.name}, expected {dtype.name}")


def decode(
    data: bytes | bytearray | memoryview,
    *,
    limits: Limits = DEFAULT_LIMITS,
    expect: Mapping[str, object] | None = None,
    threads: int | None = None,
    temporal_reference: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Decode every tensor of a stream, in stream order (same names, shapes and dtypes).

    Parameters
    ----------
    limits
        Bounds on the header, and the memory budget (:attr:`Limits.max_decode_bytes`, 1 GiB by
        default): the outputs, the working arrays and the zstd plain buffers (every frame's declared
        size is read before any is decompressed, :func:`decoding_memory`); a stream that needs more
        is refused before anything is allocated, and tensors decode in fewer threads where the
        budget does not cover their working arrays at once.
    expect
        The tensors the stream must describe (any arrays, or objects with ``shape`` and ``dtype``):
        ``limits`` are replaced by theirs (:meth:`Limits.for_schema`, so the budget is exactly
        what they need) and the table is checked against them before any payload is decoded
        (:class:`SchemaError` otherwise).
    threads
        The tensors are decoded in this many threads (as for :func:`encode`; ``None``: by size).
    temporal_reference
        The mapping the stream was encoded with (``encode(..., temporal_reference=...)``), needed
        by a stream that names one (flag bit 3) and ignored otherwise; without it, or with another
        (the digests differ), :class:`TemporalReferenceError` is raised before any payload is
        decoded.

    Raises :class:`FormatError` for any malformed, truncated, corrupted, unsupported or over-limit
    stream.
    """
    if expect is not None:
        limits = Limits.for_schema(expect)
    try:
        info = bs.read_table(data, limits, expect)
    except LimitError as exc:
        if expect is not None:  # the schema's limits are exact: a larger table is another schema
            raise SchemaError(f"the stream describes more than the expected tensors ({exc})") from exc
        raise
    if expect is not None:
        _check_schema(info, expect)
    reference = _check_temporal(info, temporal_reference)
    workers = _thread_count(threads, sum(t.numel for t in info.tensors))
    workers = _check_memory(data, info.tensors, limits, workers)
    bs.check_payload_crc(data, info)
    view = memoryview(data).cast("B")
    arrays = _map_tensors(
        lambda t: _decode_one(view, t, reference), info.tensors, [t.numel for t in info.tensors], workers
    )
    return {t.name: a for t, a in zip(info.tensors, arrays, strict=True)}


def decode_tensor(
    data: bytes | bytearray | memoryview,
    name: str,
    *,
    limits: Limits = DEFAULT_LIMITS,
    expect: Mapping[str, object] | None = None,
    temporal_reference: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Decode only tensor ``name`` (within ``limits``, its memory budget included); other payloads
    are not decoded (a schema-bound stream, which needs ``expect``, has one CRC over all payloads:
    that is checked). ``KeyError`` if it is absent. ``temporal_reference``: as for :func:`decode`."""
    info = bs.read_table(data, limits, expect)
    t = info.tensor(name)
    reference = _check_temporal(info, temporal_reference)
    _check_memory(data, [t], limits)
    bs.check_payload_crc(data, info)
    return _decode_one(memoryview(data).cast("B"), t, reference)


def _check_temporal(info: StreamInfo, reference: Mapping[str, np.ndarray] | None) -> Mapping | None:
    """The temporal reference a stream names (flag bit 3), checked against its digest; ``None`` if
    it names none. :class:`TemporalReferenceError` if it is missing or another."""
    if info.temporal_digest is None:
        return None
    if reference is None:
        raise TemporalReferenceError(
            "the stream is coded with temporal contexts: decoding needs its temporal reference "
            f"(digest {info.temporal_digest.hex()}; pass temporal_reference=...)"
        )
    if not isinstance(reference, Mapping):
        raise TypeError(f"temporal_reference must be a mapping name -> array, got {type(reference).__name__}")
    if digest_of(reference) != info.temporal_digest:
        raise TemporalReferenceError(
            f"the stream's temporal reference (digest {info.temporal_digest.hex()}) is not the one given"
        )
    return reference


def read_fingerprint(data: bytes | bytearray | memoryview, *, limits: Limits = DEFAULT_LIMITS) -> bytes | None:
    """The fingerprint a stream carries (``None`` if none), checking the header's integrity only."""
    return bs.read_fingerprint(data, limits)


def is_schema_bound(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` looks like a schema-bound stream (flag bit 2); reads only its first 6 bytes."""
    view = memoryview(data).cast("B")
    return len(view) >= 6 and bytes(view[:4]) == bs.MAGIC and bool(view[5] & bs.FLAG_SCHEMA)


def inspect(
    data: bytes | bytearray | memoryview,
    *,
    limits: Limits = DEFAULT_LIMITS,
    expect: Mapping[str, object] | None = None,
) -> StreamInfo:
    """The header table of a stream (names, dtypes, shapes, modes, steps, sizes), without decoding.

    ``str(inspect(data))`` is a human-readable table; ``.as_rows()`` gives plain dicts. A
    schema-bound stream needs its schema (``expect``), as for :func:`decode`.
    """
    return bs.read_table(data, limits, expect)


# --- encoding one tensor -------------------------------------------------------------------------


def _as_array(name: object, value: object, limits: Limits) -> np.ndarray:
    if not isinstance(name, str):
        raise TypeError(f"tensor names must be str, got {name!r}")
    if len(name.encode("utf-8")) > limits.max_name_bytes:
        raise ValueError(f"tensor name {name[:40]!r}... is longer than {limits.max_name_bytes} bytes")
    try:
        arr = np.asarray(value)
    except Exception as exc:  # e.g. a torch bfloat16 tensor numpy cannot view
        raise TypeError(f"tensor {name!r}: cannot be converted to a numpy array ({exc})") from exc
    native = arr.dtype.newbyteorder("=")
    if native.newbyteorder("<") not in bs.DTYPE_CODES:
        raise TypeError(f"tensor {name!r}: unsupported dtype {arr.dtype} (bool, int, uint and float16/32/64 are)")
    if arr.ndim > limits.max_ndim:
        raise ValueError(f"tensor {name!r}: rank {arr.ndim} above {limits.max_ndim}")
    if arr.size > limits.max_tensor_elements:
        raise ValueError(f"tensor {name!r}: {arr.size} elements, above the limit {limits.max_tensor_elements}")
    return np.asarray(arr, dtype=native, order="C")


def _dq_states(dq: object) -> int:
    """The states of the DQ machine ``dq`` asks for: 0 (off), 4 or 8."""
    if isinstance(dq, (bool, np.bool_)):
        return 4 if dq else 0
    if isinstance(dq, (int, np.integer)) and int(dq) in (0, 4, 8):
        return int(dq)
    raise ValueError(f"dq must be False, True (4 states), 4 or 8, got {dq!r}")


def _first_state(tools: int) -> int:
    """The first state of a DQ tensor's machine (tools bit 7: the 8-state one)."""
    return START_8 if tools & bs.TOOL_DQ_8STATES else 0


def _cols(shape: tuple[int, ...], numel: int) -> int:
    """Columns of the 2-D scan view: all dimensions after the first (one row for 0-d / 1-d)."""
    return numel // shape[0] if len(shape) >= 2 else numel


def _quantise_within_range(name: str, flat: np.ndarray, s: float, dtype: np.dtype) -> tuple[np.ndarray, float, int]:
    """Levels of ``flat`` at step ``s``, halving ``s`` while a reconstruction would overflow ``dtype``;
    returns them, the step and their largest magnitude."""
    top = float(np.finfo(dtype).max)
    while True:
        levels, status = quantise(flat, s, MAX_LEVEL)
        if status != OK:
            why = "holds NaN or Inf values" if status == NOT_FINITE else f"step {s:g} gives levels beyond 2**62"
            raise ValueError(f"tensor {name!r}: {why}")
        top_level = max_magnitude(levels)
        if float(top_level) * s <= top:
            return levels, s, top_level
        s = float(np.float32(s / 2))  # rounding up at the edge of the range: a finer step stays inside


def _on_grid_multiple(s: float, g: float) -> float:
    """The integer multiple of grid step ``g`` nearest to ``s`` (at least ``g``): a finer choice of
    steps than :func:`_on_grid` that keeps a model on the grid just as well (rate control)."""
    return g * max(1.0, float(round(s / g)))


def _on_grid(s: float, g: float) -> float:
    """The power-of-two multiple of grid step ``g`` nearest to ``s`` (at least ``g``)."""
    return g * 2.0 ** max(0, round(math.log2(s / g)))


@dataclass(frozen=True)
class _Options:
    """Encoder settings that apply to every tensor of a stream."""

    rd_lambda: float = 0.0
    bf16_steps: bool = False  # schema-bound tables carry bfloat16 steps
    dq: int = 0  # the DQ machine's states: 0 (off), 4 or 8
    rate_search: bool = False
    row_refs: bool = False
    float_lossless: bool = False  # exact tensors coded by nnc_fl._floatcoder instead of raw
    grid_multiples: bool = False  # steps on a grid: any integer multiple (rate control), not a power of two
    temporal: Mapping[str, np.ndarray] | None = None  # the temporal reference (tools bit 5), if any


def _reconstruction(record: bs.TensorRecord, arr: np.ndarray, levels: np.ndarray | None) -> np.ndarray:
    """What :func:`_decode_one` returns for ``record`` (coded from ``arr``; ``levels``: the coded
    integers of modes quant and int), computed without decoding the payload."""
    native = arr.dtype.newbyteorder("=")
    if record.mode == bs.MODE_ZERO:
        return np.zeros(arr.shape, native)
    if record.mode == bs.MODE_QUANT:  # the stream carries the step as float32
        return dequantise(levels, np.float64(np.float32(record.step))).astype(native).reshape(arr.shape)
    if record.mode == bs.MODE_INT:
        return levels.astype(native).reshape(arr.shape)
    return arr.astype(native, copy=True)  # raw and float-lossless: exact


#: A tensor's record and its coded integers (modes quant and int, else ``None``), and, where the
#: record uses temporal contexts, the same tensor coded without them (else ``None``).
_CodedTensor = tuple[bs.TensorRecord, "np.ndarray | None", "tuple[bs.TensorRecord, np.ndarray | None] | None"]


def _code_tensor(name, arr, step, qp, rel_step, exact, opts: _Options, grid) -> _CodedTensor:
    """The record of tensor ``arr`` and its coded integers; where they use temporal contexts, also
    the coding without them (:func:`_settle_temporal` chooses)."""
    record, levels = _code_one_way(name, arr, step, qp, rel_step, exact, opts, grid)
    if not record.tools & bs.TOOL_TEMPORAL:
        return record, levels, None
    return record, levels, _code_one_way(name, arr, step, qp, rel_step, exact, replace(opts, temporal=None), grid)


#: Temporal contexts are used in a stream only if they save at least the bytes of the digest they add.
TEMPORAL_MIN_SAVING = bs.TEMPORAL_DIGEST_BYTES


def _settle_temporal(coded: list[_CodedTensor]) -> list[tuple[bs.TensorRecord, np.ndarray | None]]:
    """The records and integers of a stream's tensors: with temporal contexts where they make the
    tensor smaller (a reference that does not predict costs bytes), unless those save fewer bytes
    in all than :data:`TEMPORAL_MIN_SAVING` (then every one without)."""
    coded = [
        (*plain, None) if plain is not None and len(plain[0].payload) <= len(record.payload)
        else (record, levels, plain)
        for record, levels, plain in coded
    ]
    saved = sum(len(plain[0].payload) - len(record.payload) for record, _, plain in coded if plain is not None)
    if saved >= TEMPORAL_MIN_SAVING:
        return [(record, levels) for record, levels, _ in coded]
    return [plain if plain is not None else (record, levels) for record, levels, plain in coded]


def _code_one_way(
    name, arr, step, qp, rel_step, exact, opts: _Options, grid
) -> tuple[bs.TensorRecord, np.ndarray | None]:
    """The record of tensor ``arr``, and its coded integers in modes quant and int (else ``None``),
    with temporal contexts where ``opts`` has a reference for it."""
    shape, dtype = arr.shape, arr.dtype
    if arr.size == 0:
        return bs.TensorRecord(name, dtype, shape, bs.MODE_ZERO), None
    if dtype.kind == "f":
        if exact:
            if not np.isfinite(arr).all():
                raise ValueError(f"tensor {name!r} holds NaN or Inf values")
            # bitwise test: -0.0 is not zero for a lossless tensor
            if not arr.view(f"u{dtype.itemsize}").any():
                return _zero(name, arr), None
            if opts.float_lossless:
                payload = encode_float_payload(arr)
                if len(payload) < arr.nbytes:
                    return bs.TensorRecord(name, dtype, shape, bs.MODE_FLOAT_LOSSLESS, payload=payload), None
            return _raw(name, arr), None
        flat = arr.reshape(-1) if dtype.itemsize >= 4 else arr.reshape(-1).astype(np.float32)  # exact
        s = resolve_step(name, arr, step, qp, rel_step)
        if grid is not None:
            s = _on_grid_multiple(s, grid) if opts.grid_multiples else _on_grid(s, grid)
        if opts.bf16_steps:
            s = bs.bf16_round(s)
        levels, s, top = _quantise_within_range(name, flat, s, dtype)
        mode = bs.MODE_QUANT
    else:
        if arr.dtype.itemsize == 8 and (arr.max() > MAX_LEVEL or (dtype.kind == "i" and arr.min() < -MAX_LEVEL)):
            return _raw(name, arr), None  # beyond what levels carry
        levels, s, mode = arr.reshape(-1).astype(np.int64), None, bs.MODE_INT
        top = max_magnitude(levels)
    if top == 0:
        return _zero(name, arr), None
    cols = _cols(shape, arr.size)
    tools = DEFAULT_RATE_INDEX
    if mode == bs.MODE_QUANT and opts.dq and float(top) < MAX_DQ_INDEX:
        first, dq_tools = (START_8, bs.TOOL_DQ | bs.TOOL_DQ_8STATES) if opts.dq == 8 else (0, bs.TOOL_DQ)
        # lambda per bit in units of the quantisers' spacing (2 steps) squared: x 4 in step units
        payload, ks = encode_levels_dq(flat, s, 4.0 * opts.rd_lambda, cols, DEFAULT_RATE_INDEX, first_state=first)
        if not ks.any():
            return _zero(name, arr), None
        levels = dq_levels(ks, first)
        tools |= dq_tools
        if float(np.abs(levels).max()) * s > float(np.finfo(dtype).max):
            return _raw(name, arr), None  # a level rounded past the dtype's range (float16 near 65504)
        if opts.rate_search:
            best = int(np.argmin(rate_costs(ks[: _search_span(ks.size, cols)], cols, True, first)))
            if best != DEFAULT_RATE_INDEX:
                payload, tools = encode_indices_dq(ks, cols, best, first), dq_tools | best
        payload = payload.tobytes()
    else:
        if opts.rate_search:  # on the rounded levels, before any RD lowering: one coding pass only
            tools = int(np.argmin(rate_costs(levels[: _search_span(levels.size, cols)], cols, False)))
        x = flat if mode == bs.MODE_QUANT else None  # (the values, for rate-distortion rounding)
        tref, shift = (None, 0)
        if mode == bs.MODE_QUANT and opts.temporal:
            tref, shift = _temporal_classes(name, opts.temporal, arr, s)
        payload, levels, tools = _code_levels(levels, x, s, top, cols, tools, opts, tref)
        if tref is not None:
            tools |= bs.TOOL_TEMPORAL | (shift << bs.TOOL_TEMPORAL_SCALE_SHIFT)
        if not levels.any():
            return _zero(name, arr), None
        payload = payload.tobytes()
    if opts.row_refs and arr.ndim >= 2 and shape[0] >= 2:
        coded = ks if tools & bs.TOOL_DQ else levels
        refs = choose_refs(coded, cols, max(1, SEARCH // cols), MIN_EQUAL)
        if refs.any():
            rate = tools & bs.TOOLS_RATE_MASK
            with_refs = encode_rows(coded, refs, cols, rate, bool(tools & bs.TOOL_DQ), _first_state(tools)).tobytes()
            if len(with_refs) < len(payload):
                temporal = bs.TOOL_TEMPORAL | bs.TOOL_TEMPORAL_SCALE_MASK
                payload, tools = with_refs, (tools & ~(bs.TOOL_EG_CTX | temporal)) | bs.TOOL_ROW_REFS
    if len(payload) >= arr.nbytes:
        return _raw(name, arr), None  # never larger than the raw values (and then exact)
    return bs.TensorRecord(name, dtype, shape, mode, s, tools, payload), levels


#: Largest scale exponent of a temporal reference (tools bit 6).
MAX_TEMPORAL_SHIFT = 1


def _temporal_classes(
    name: str, reference: Mapping, arr: np.ndarray, step: float
) -> tuple[np.ndarray | None, int]:
    """Tools bits 5-6: the int8 reference classes of quantised tensor ``arr`` (float32/64) at
    ``step`` (as the table carries it) from ``reference[name]``, and the scale exponent ``s``; the
    classes are ``None`` where the tool does not apply (no such reference, another dtype, or every
    class 0: the contexts would be the usual ones). ``s`` (0 or 1) scales the reference to the
    tensor's size: the power of two nearest the ratio of their RMS, at most 2 (an update of one
    node is larger than the average of several it is compared with). ``ValueError`` for a reference of
    another shape or dtype, or one holding NaN/Inf."""
    if name not in reference or arr.dtype.itemsize < 4:
        return None, 0
    ref = np.asarray(reference[name])
    if ref.shape != arr.shape or ref.dtype.kind != "f" or ref.dtype.itemsize < 4:
        raise ValueError(
            f"temporal reference of tensor {name!r}: a float32/64 array of shape {arr.shape} is needed, "
            f"got {ref.dtype.name} {ref.shape}"
        )
    flat = _finite_reference(name, ref, reference)
    ref_ss = float(sum_squares(flat))
    if ref_ss == 0.0:
        return None, 0
    ratio = math.sqrt(float(sum_squares(arr.reshape(-1))) / ref_ss)  # (float64 sums may overflow: inf, 0)
    if ratio == math.inf:
        shift = MAX_TEMPORAL_SHIFT
    else:
        shift = 0 if ratio <= 1 else min(round(math.log2(ratio)), MAX_TEMPORAL_SHIFT)
    tref = _classes(flat, step, shift)
    return (tref if tref.any() else None), shift


def _finite_reference(name: str, ref: np.ndarray, reference: Mapping) -> np.ndarray:
    """``ref`` (``reference[name]``) flattened, or ``ValueError`` if it holds NaN or Inf."""
    flat = ref.reshape(-1)
    if not is_finite(reference, name, flat):
        raise ValueError(f"temporal reference of tensor {name!r} holds NaN or Inf values")
    return flat


def _classes(flat: np.ndarray, step: float, shift: int) -> np.ndarray:
    """``temporal_classes`` of a finite float32/64 reference scaled by ``2**shift`` at the float32
    ``step`` (the reference divided by ``step * 2**-shift``, exactly)."""
    return temporal_classes(flat, float(np.float32(step)) * 2.0**-shift, np.empty(flat.size, np.int8))


def _code_levels(levels, flat, step, top, cols, tools, opts: _Options, tref) -> tuple[np.ndarray, np.ndarray, int]:
    """Plain level coding of one tensor: (payload, the levels coded -- lowered in place by
    rate-distortion rounding where ``flat``, the values of a quant tensor, is given and
    ``opts.rd_lambda`` > 0 --, tools with bit 4 where set); ``tref``: temporal reference classes,
    or None."""
    rate = tools & bs.TOOLS_RATE_MASK
    if flat is not None and opts.rd_lambda > 0:
        return encode_levels_rd(levels, flat, step, opts.rd_lambda, cols, rate, False, tref), levels, tools
    # levels past the flags: their Exp-Golomb prefixes in contexts where that is estimated to pay
    # (to a few bits of the coded sizes: one coding pass instead of trying both)
    egctx = top > GT_FLAGS and eg_context_gain(levels, rate) > 0
    payload = encode_levels(levels, cols, rate, egctx, tref)
    return payload, levels, (tools | bs.TOOL_EG_CTX) if egctx else tools


#: The rate-pair search looks at the first whole rows of at least this many elements of a tensor.
RATE_SEARCH_ELEMENTS = 1 << 16


def _search_span(n: int, cols: int) -> int:
    """Elements the rate-pair search estimates on: whole rows, at least RATE_SEARCH_ELEMENTS."""
    return min(n, max(cols, -(-RATE_SEARCH_ELEMENTS // cols) * cols))


def _zero(name: str, arr: np.ndarray) -> bs.TensorRecord:
    return bs.TensorRecord(name, arr.dtype, arr.shape, bs.MODE_ZERO)


def _raw(name: str, arr: np.ndarray) -> bs.TensorRecord:
    payload = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    return bs.TensorRecord(name, arr.dtype, arr.shape, bs.MODE_RAW, payload=payload)


# --- decoding one tensor -------------------------------------------------------------------------


def _check_status(t: TensorInfo, status: int) -> None:
    """Raise the :class:`FormatError` a levels decoder's status names (none for OK)."""
    if status == BAD_REF:
        raise FormatError(f"tensor {t.name!r}: a row references a row not coded before it")
    if status == BAD_LEVEL:
        raise FormatError(f"tensor {t.name!r}: payload codes a level beyond 2**62")
    if status == SHORT_PAYLOAD:
        raise FormatError(f"tensor {t.name!r}: payload ends before all {t.numel} elements are coded")


def _reference_classes(t: TensorInfo, reference: Mapping) -> np.ndarray:
    """The reference classes of tensor ``t`` (tools bit 5) from the checked temporal reference."""
    ref = np.asarray(reference[t.name]) if t.name in reference else None
    if ref is None or ref.shape != t.shape or ref.dtype.kind != "f" or ref.dtype.itemsize < 4:
        raise FormatError(f"tensor {t.name!r}: temporal contexts, but the reference has no float32/64 tensor "
                          f"of shape {t.shape} by that name")
    shift = (t.tools & bs.TOOL_TEMPORAL_SCALE_MASK) >> bs.TOOL_TEMPORAL_SCALE_SHIFT
    try:
        return _classes(_finite_reference(t.name, ref, reference), t.step, shift)
    except ValueError as exc:
        raise FormatError(str(exc)) from None


def _check_range(t: TensorInfo, top: int, native: np.dtype) -> None:
    """Refuse a quantised tensor whose largest level magnitude ``top`` reconstructs beyond its dtype."""
    if float(top) * t.step > float(np.finfo(native).max):
        raise FormatError(f"tensor {t.name!r}: a reconstruction overflows {native.name}")


def _decode_one(view: memoryview, t: TensorInfo, reference: Mapping | None = None) -> np.ndarray:
    native = t.dtype.newbyteorder("=")
    if t.mode == bs.MODE_ZERO:
        return np.zeros(t.shape, native)
    payload = view[t.offset : t.offset + t.length]
    if t.crc32 is not None and zlib.crc32(payload) != t.crc32:
        raise FormatError(f"tensor {t.name!r}: payload CRC mismatch (corrupted)")
    if t.zstd:
        payload = bs.unzstd_payload(payload, t)
    if t.mode == bs.MODE_RAW:
        if native.kind == "b" and np.frombuffer(payload, dtype=np.uint8).max(initial=0) > 1:
            raise FormatError(f"tensor {t.name!r}: raw bool bytes must be 0 or 1")
        return np.frombuffer(payload, dtype=t.dtype).astype(native).reshape(t.shape)
    if t.mode in bs.FLOAT_MODES:
        return payloads.decode_payload(payload, t)
    if t.mode == bs.MODE_FLOAT_LOSSLESS:
        return decode_float_payload(payload, native, t.numel, f"tensor {t.name!r}").reshape(t.shape)
    numel = t.numel
    data = np.frombuffer(payload, dtype=np.uint8)
    cols, rate = _cols(t.shape, numel), t.tools & bs.TOOLS_RATE_MASK
    if t.mode == bs.MODE_QUANT and not t.tools & bs.TOOL_ROW_REFS and native.itemsize >= 4:
        # straight into the output: no int64 levels, no float64 values (the common case, ~1/3 faster)
        values = np.empty(numel, native)
        if t.tools & bs.TOOL_DQ:
            status, top = decode_values_dq(data, cols, rate, np.float64(t.step), values, _first_state(t.tools))
        else:
            tref = _reference_classes(t, reference) if t.tools & bs.TOOL_TEMPORAL else None
            egctx = bool(t.tools & bs.TOOL_EG_CTX)
            status, top = decode_values(data, cols, rate, egctx, np.float64(t.step), values, tref)
        _check_status(t, status)
        _check_range(t, top, native)
        return values.reshape(t.shape)
    if t.tools & bs.TOOL_ROW_REFS:
        levels, status = decode_rows(data, numel, cols, rate, bool(t.tools & bs.TOOL_DQ), _first_state(t.tools))
    elif t.tools & bs.TOOL_DQ:
        levels, status = decode_levels_dq(data, numel, cols, rate, _first_state(t.tools))
    else:
        levels, status = decode_levels(data, numel, cols, rate, bool(t.tools & bs.TOOL_EG_CTX))
    _check_status(t, status)
    if t.mode == bs.MODE_QUANT:
        _check_range(t, max_magnitude(levels), native)
        return dequantise(levels, np.float64(t.step)).astype(native).reshape(t.shape)
    info = np.iinfo(native) if native.kind != "b" else np.iinfo(np.uint8)
    lo, hi = (0, 1) if native.kind == "b" else (info.min, info.max)
    if levels.min() < lo or levels.max() > hi:
        raise FormatError(f"tensor {t.name!r}: coded values out of range for {native.name}")
    return levels.astype(native).reshape(t.shape)
