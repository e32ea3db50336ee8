"""Pluggable update codecs: the interface the Flower wrappers code against, and a registry.

The strategy wrapper and the client mod never call :func:`nnc_fl.encode` directly: they hold an
:class:`UpdateCodec` made by :func:`make_codec` from a name and parameters that travel from the server
to the clients in the round's ConfigRecord. That way the NNC codec, the uncompressed baseline and the
classic baselines of ``experiments/`` all pass through the same code path and their bytes are counted
the same way.

A codec must be deterministic (same input, same bytes) and its ``decode`` must raise
:class:`nnc_fl.FormatError` -- and nothing else -- for any malformed input.

Codecs defined elsewhere are found two ways: registered explicitly (:func:`register_codec`, e.g.
``experiments.baselines.register_baselines()``), or declared by an installed package as an entry
point in the group ``nnc_fl.codecs`` (name = codec name, value = ``module:factory``), which
:func:`make_codec` loads on first use of the name -- so a Flower client or a Ray worker that never
imported the defining module can still build the codec.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from fnmatch import fnmatchcase
from importlib import metadata
from typing import Protocol, runtime_checkable

import numpy as np

from .api import decode, encode, is_schema_bound, read_fingerprint
from .bitstream import DEFAULT_LIMITS, Limits
from .errors import FormatError
from .rate import KEEP_WITHIN, check_keep_within, check_target_bytes, check_target_fraction
from .steps import (
    check_lossless_bits,
    check_rd_lambda,
    check_rel_step,
    check_rel_to,
    check_step,
    check_step_choice,
    qp_to_step,
)

ParamValue = int | float | str | bool


@runtime_checkable
class UpdateCodec(Protocol):
    """What the Flower wrappers need from a codec.

    A codec may also offer ``encode_decoded(tensors, **same keywords as encode) -> (bytes,
    decoded)``, returning with the stream what :meth:`decode` gives for it; the wrappers then
    skip decoding their own streams (see :func:`nnc_fl.updates.code_update`). A codec with a true
    ``temporal`` attribute takes ``temporal_reference=`` (the previous update both ends hold) in
    ``encode``, ``encode_decoded`` and ``decode`` (see :class:`NNCCodec`).
    """

    #: Registry name; sent to clients so they build the same codec.
    name: str

    def encode(
        self,
        tensors: Mapping[str, np.ndarray],
        *,
        fingerprint: bytes | None = None,
        exact: bool = False,
        limits: Limits | None = None,
    ) -> bytes:
        """Code ``tensors``; ``exact=True`` asks for a lossless representation (keyframes).

        A stream a decoder with ``limits`` (default :data:`nnc_fl.DEFAULT_LIMITS`) would refuse is
        not written (``ValueError``).
        """
        ...

    def decode(
        self, data: bytes, *, expect: Mapping[str, np.ndarray] | None = None, limits: Limits | None = None
    ) -> dict[str, np.ndarray]:
        """Inverse of :meth:`encode`; raises :class:`FormatError` on malformed input or beyond
        ``limits`` (default :data:`nnc_fl.DEFAULT_LIMITS`, memory budget included).

        With ``expect`` (the tensors the stream must describe), a stream describing other names,
        shapes or dtypes raises :class:`nnc_fl.SchemaError` before any payload is decoded, and the
        decoder allocates no more than those tensors need.
        """
        ...

    def fingerprint_of(self, data: bytes) -> bytes | None:
        """The fingerprint :meth:`encode` bound into ``data`` (``None`` if none); checks only as
        much of the stream as it needs, raising :class:`FormatError` if that is malformed."""
        ...

    def params(self) -> dict[str, ParamValue]:
        """The settings that rebuild this codec with :func:`make_codec` (``name`` excluded)."""
        ...


_REGISTRY: dict[str, Callable[..., UpdateCodec]] = {}

#: Entry-point group in which installed packages declare codecs (``name = "module:factory"``).
ENTRY_POINT_GROUP = "nnc_fl.codecs"


def register_codec(name: str, factory: Callable[..., UpdateCodec]) -> None:
    """Make ``make_codec(name, **params)`` call ``factory(**params)``.

    Re-registering a name with the same factory is a no-op; with another factory it is an error.
    """
    if not isinstance(name, str) or not name or len(name) > 64:
        raise ValueError(f"codec name must be a non-empty string of at most 64 characters, got {name!r}")
    old = _REGISTRY.get(name)
    if old is not None and old is not factory:
        raise ValueError(f"codec name {name!r} is already registered to {old!r}")
    _REGISTRY[name] = factory


def _entry_points() -> dict[str, metadata.EntryPoint]:
    """Codecs declared by installed packages in :data:`ENTRY_POINT_GROUP` (first one of a name wins)."""
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def registered_codecs() -> list[str]:
    """Names accepted by :func:`make_codec`, sorted: registered ones and installed entry points."""
    return sorted(set(_REGISTRY) | set(_entry_points()))


def _load_entry_point(name: str) -> Callable[..., UpdateCodec] | None:
    """Register and return the factory an installed package declares for ``name`` (None if none)."""
    ep = _entry_points().get(name)
    if ep is None:
        return None
    try:
        factory = ep.load()
    except Exception as exc:  # the declaring package is broken or incomplete
        raise ValueError(f"codec {name!r}: entry point {ep.value!r} failed to load ({exc})") from exc
    register_codec(name, factory)
    return factory


def make_codec(name: str, **params: ParamValue) -> UpdateCodec:
    """Build the codec registered as ``name`` with ``params``.

    A name not registered yet is looked up among the installed entry points of the group
    ``nnc_fl.codecs`` (and registered if found). Raises ``ValueError`` (a clear reason) for an
    unknown name or parameters the codec rejects.
    """
    factory = _REGISTRY.get(name)
    if factory is None:
        factory = _load_entry_point(name)
    if factory is None:
        raise ValueError(f"unknown codec {name!r}; registered: {', '.join(registered_codecs())}")
    try:
        return factory(**params)
    except TypeError as exc:  # unexpected keyword
        raise ValueError(f"bad parameters for codec {name!r}: {exc}") from exc


#: Name patterns of the statistics gradients do not train: the running means and variances of
#: normalisation layers (PyTorch ``running_mean`` / ``running_var``, Keras ``moving_mean`` /
#: ``moving_variance``). Their deltas follow each node's data, not the loss.
STATISTICS = ("*running_mean", "*running_var", "*moving_mean", "*moving_variance")

#: Tensors coded exactly by default: the :data:`STATISTICS`, whose invariants a quantised update
#: could break (a BatchNorm running variance must stay >= 0); ``lossless_bits`` may round them up.
DEFAULT_LOSSLESS = ",".join(STATISTICS)


def name_patterns(value: object, what: str) -> tuple[str, ...]:
    """Comma-separated ``fnmatch`` patterns (a string, or a list/tuple of strings) as a tuple;
    ``TypeError`` naming ``what`` for anything else."""
    if isinstance(value, (list, tuple)) and all(isinstance(p, str) for p in value):
        value = ",".join(value)
    if not isinstance(value, str):
        raise TypeError(f"{what} must be comma-separated name patterns, got {value!r}")
    return tuple(p.strip() for p in value.split(",") if p.strip())


def name_matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether ``name`` matches one of the ``fnmatch`` ``patterns`` (case-sensitive)."""
    return any(fnmatchcase(name, p) for p in patterns)


def _pattern_steps(value: object) -> tuple[tuple[str, float], ...]:
    """``"pattern=step,pattern=step"`` (or a mapping pattern -> step) as ``((pattern, step), ...)``."""
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, str):
        items = []
        for part in (p.strip() for p in value.split(",") if p.strip()):
            pattern, sep, number = part.rpartition("=")
            if not sep or not pattern.strip():
                raise ValueError(f"steps must be 'pattern=step,...', got {part!r}")
            try:
                items.append((pattern.strip(), float(number)))
            except ValueError:
                raise ValueError(f"steps: {number!r} is not a number (in {part!r})") from None
    else:
        raise TypeError(f"steps must be 'pattern=step,...' or a mapping, got {value!r}")
    return tuple((str(p), check_step(p, s)) for p, s in items)


def _dq_param(value: object) -> int:
    """``dq`` as it may travel: a flag (true: the 4-state machine) or the machine's states, 4 or 8
    (ints or text). Returns 0 (off), 4 or 8."""
    if isinstance(value, str) and value.strip() in ("4", "8"):
        return int(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and int(value) in (4, 8):
        return int(value)
    try:
        return 4 if _flag(value, "dq") else 0
    except ValueError:
        raise ValueError(f"dq must be true, false, 4 or 8, got {value!r}") from None


def _flag(value: object, what: str) -> bool:
    """A boolean codec parameter (bools, or 0/1 and "true"/"false" as they may travel as text)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise ValueError(f"{what} must be true or false, got {value!r}")


class NNCCodec:
    """The nnc-fl codec: quantisation + context-adaptive arithmetic coding (:func:`nnc_fl.encode`).

    ``step`` (a number), ``qp`` (NNC QP) or ``rel_step`` (a multiple of each tensor's RMS, or with
    ``rel_to="update"`` of the whole update's RMS: one step for all) sets the quantisation of float
    tensors, ``rd_lambda`` its rate-distortion trade-off (see
    :func:`nnc_fl.encode`); with none, the default per-tensor policy of
    :func:`nnc_fl.steps.default_step` applies. ``exact=True`` codes every tensor losslessly
    (keyframes).

    Per-tensor policy, by ``fnmatch`` pattern on the tensor names (comma-separated, as they travel
    to the clients as text): ``lossless`` names float tensors coded exactly (default
    :data:`DEFAULT_LOSSLESS`, the BatchNorm-style running statistics; ``""`` for none); ``steps``
    gives absolute steps, ``"pattern=step,..."``, that override the codec-wide setting for the
    tensors they match (the first matching pattern wins). ``lossless_bits`` (a number of mantissa
    bits) rounds the ``lossless`` tensors of updates up to that precision first (never down, so a
    variance stays >= 0; see :func:`nnc_fl.encode`); keyframes stay exact.

    ``dq=True`` turns on dependent (trellis-coded) quantisation (``dq=8``: with NNC's 8-state
    machine), ``rate_search=True`` the
    per-tensor choice of probability adaptation rates, ``row_refs=True`` row references (see
    :func:`nnc_fl.encode`). ``temporal=True`` codes lossy streams with temporal contexts where
    the caller passes ``temporal_reference=`` (the Flower wrappers pass the last global
    increment, which server and clients hold alike; FORMAT.md, tools bit 5); ``decode`` takes
    the reference whatever the setting.
    ``schema_bound=True`` writes lossy updates with the compact schema-bound table (FORMAT.md, flag
    bit 2), which decoders read with ``decode(data, expect=base_model)``; keyframes
    (``exact=True``) stay self-contained. The codec remembers the schema of the last stream it
    encoded, so decoding its own stream again without ``expect`` (error feedback on the client)
    works; any other schema-bound stream needs ``expect``.
    ``float_lossless=True`` codes the float tensors that are coded exactly (``lossless`` ones,
    and the keyframe tensors not on an anchor grid) in mode float-lossless where that is smaller
    than raw (about 17 % for trained fp32 models; FORMAT.md); the default ``False`` keeps them
    raw, readable by decoders that predate the mode.

    Rate control (:mod:`nnc_fl.rate`): ``target_bytes`` (an integer) or ``target_fraction`` (a
    share of the fp32 size of the tensors coded, ``4 x elements``, in (0, 1)) is a budget per
    stream; every lossy stream is then coded at one common multiple of the steps above, the finest
    found within the budget (``nnc_fl.encode(..., target_bytes=...)``). Keyframes (``exact=True``)
    are not affected. Decoders need neither parameter. ``keep_within`` (a fraction in [0, 1), 0:
    off) lets a budgeted stream keep the steps of a previous one the caller passes
    (``encode(..., keep_steps=...)``) while the stream at them lies within that fraction below the
    budget: the server's increments then share their steps (``strategies.server_model``).
    """

    name = "nnc"

    def __init__(
        self,
        step: float | None = None,
        qp: int | None = None,
        rel_step: float | None = None,
        rel_to: str = "tensor",
        rd_lambda: float = 0.0,
        lossless: str | list[str] | tuple[str, ...] = DEFAULT_LOSSLESS,
        lossless_bits: int | None = None,
        steps: str | Mapping[str, float] = "",
        schema_bound: bool = False,
        dq: bool | int = False,
        rate_search: bool = False,
        row_refs: bool = False,
        float_lossless: bool = False,
        target_bytes: int | None = None,
        target_fraction: float | None = None,
        keep_within: float = 0.0,
        temporal: bool = False,
    ):
        check_step_choice(step, qp, rel_step)
        if target_bytes is not None and target_fraction is not None:
            raise ValueError("give at most one of target_bytes and target_fraction")
        self.target_bytes = None if target_bytes is None else check_target_bytes(target_bytes)
        self.target_fraction = None if target_fraction is None else check_target_fraction(target_fraction)
        self.step = None if step is None else check_step("<all>", step)
        self.qp = None if qp is None else int(qp)
        if qp is not None:
            qp_to_step(qp)  # validates
        self.rel_step = None if rel_step is None else check_rel_step(rel_step)
        self.rel_to = check_rel_to(rel_to, self.rel_step)
        self.rd_lambda = check_rd_lambda(rd_lambda)
        self.lossless = name_patterns(lossless, "lossless")
        self.lossless_bits = check_lossless_bits(lossless_bits)
        self.steps = _pattern_steps(steps)
        self.schema_bound = _flag(schema_bound, "schema_bound")
        self.dq = _dq_param(dq)  # 0 (off), 4 or 8 states
        self.rate_search = _flag(rate_search, "rate_search")
        self.row_refs = _flag(row_refs, "row_refs")
        self.float_lossless = _flag(float_lossless, "float_lossless")
        self.keep_within = check_keep_within(keep_within, allow_off=True)
        self.temporal = _flag(temporal, "temporal")
        self._last_schema: dict[str, np.ndarray] | None = None

    #: Encodes on an anchor grid (``encode(..., grid=...)``): see :func:`nnc_fl.encode`.
    supports_grid = True

    def lossless_names(self, names) -> list[str]:
        """The names among ``names`` this codec codes exactly (its ``lossless`` patterns)."""
        return self._policy(names)[0]

    def _policy(self, names) -> tuple[list[str], dict[str, float]]:
        """The lossless names and the per-name step overrides of ``names``."""
        lossless = [n for n in names if name_matches(n, self.lossless)]
        steps = {}
        for n in names:
            for pattern, value in self.steps:
                if fnmatchcase(n, pattern):
                    steps[n] = value
                    break
        return lossless, steps

    def encode(
        self, tensors, *, fingerprint=None, exact=False, limits=None, grid=None, keep_steps=None,
        temporal_reference=None,
    ) -> bytes:
        """As :meth:`UpdateCodec.encode`; with ``grid`` (name -> power of two), the steps of those
        tensors are power-of-two multiples of their grid step, and ``exact=True`` codes a model
        that lies on the grid at exactly the grid step (its integer levels) instead of raw. With a
        budget, ``keep_steps`` (name -> step, e.g. the previous stream's) are tried first and kept
        while the stream at them lies within ``keep_within`` below the budget (see
        :func:`nnc_fl.encode`); without a budget or with ``keep_within=0`` they are not used.
        ``temporal_reference``: used by a ``temporal`` codec for lossy streams (not keyframes)."""
        return self._encode(tensors, fingerprint, exact, limits, grid, False, keep_steps, temporal_reference)

    def encode_decoded(
        self, tensors, *, fingerprint=None, exact=False, limits=None, grid=None, keep_steps=None,
        temporal_reference=None,
    ) -> tuple[bytes, dict[str, np.ndarray]]:
        """As :meth:`encode`, and what :meth:`decode` returns for the stream, built from the
        encoder's levels without decoding it (``nnc_fl.encode(..., return_decoded=True)``)."""
        return self._encode(tensors, fingerprint, exact, limits, grid, True, keep_steps, temporal_reference)

    def _encode(self, tensors, fingerprint, exact, limits, grid, return_decoded, keep_steps=None, reference=None):
        lossless, overrides = self._policy(tensors)
        step = self.step
        if overrides:
            step = overrides if step is None else {**dict.fromkeys(tensors, step), **overrides}
        if exact:
            anchored = dict(grid or {})
            return encode(
                tensors,
                step=anchored,
                lossless=[n for n in tensors if n not in anchored],
                fingerprint=fingerprint,
                limits=limits or DEFAULT_LIMITS,
                rate_search=self.rate_search,
                float_lossless=self.float_lossless,
                return_decoded=return_decoded,
            )
        target = self.target_bytes
        if self.target_fraction is not None:
            raw = 4 * sum(int(np.size(v)) for v in tensors.values())
            target = max(1, math.floor(self.target_fraction * raw))
        bound = self.schema_bound
        if bound:  # zero-memory stand-ins with the shapes and dtypes (see decode)
            self._last_schema = {
                n: np.broadcast_to(np.zeros((), np.asarray(v).dtype), np.shape(v)) for n, v in tensors.items()
            }
        return encode(
            tensors,
            step=step,
            qp=self.qp,
            rel_step=self.rel_step,
            rel_to=self.rel_to,
            rd_lambda=self.rd_lambda,
            lossless=lossless,
            lossless_bits=self.lossless_bits,
            float_lossless=self.float_lossless,
            fingerprint=fingerprint,
            limits=limits or DEFAULT_LIMITS,
            grid=grid,
            schema_bound=bound,
            dq=self.dq,
            rate_search=self.rate_search,
            row_refs=self.row_refs,
            return_decoded=return_decoded,
            target_bytes=target,
            keep_steps=keep_steps if target is not None and self.keep_within > 0 else None,
            keep_within=self.keep_within or KEEP_WITHIN,
            temporal_reference=reference if self.temporal else None,
        )

    def decode(self, data: bytes, *, expect=None, limits=None, temporal_reference=None) -> dict[str, np.ndarray]:
        if expect is None and self._last_schema is not None and is_schema_bound(data):
            # own stream decoded again (error feedback): the schema is the one just encoded; the
            # digest check still refuses any stream of another schema
            return decode(data, expect=self._last_schema, temporal_reference=temporal_reference)
        return decode(data, expect=expect, limits=limits or DEFAULT_LIMITS, temporal_reference=temporal_reference)

    def fingerprint_of(self, data: bytes) -> bytes | None:
        return read_fingerprint(data)

    def params(self) -> dict[str, ParamValue]:
        out: dict[str, ParamValue] = {}
        if self.step is not None:
            out["step"] = self.step
        if self.qp is not None:
            out["qp"] = self.qp
        if self.rel_step is not None:
            out["rel_step"] = self.rel_step
        if self.rel_to != "tensor":
            out["rel_to"] = self.rel_to
        if self.rd_lambda:
            out["rd_lambda"] = self.rd_lambda
        if self.lossless != name_patterns(DEFAULT_LOSSLESS, "lossless"):
            out["lossless"] = ",".join(self.lossless)
        if self.lossless_bits is not None:
            out["lossless_bits"] = self.lossless_bits
        if self.steps:
            out["steps"] = ",".join(f"{p}={s!r}" for p, s in self.steps)
        if self.schema_bound:
            out["schema_bound"] = True
        if self.dq:
            out["dq"] = True if self.dq == 4 else self.dq
        if self.rate_search:
            out["rate_search"] = True
        if self.row_refs:
            out["row_refs"] = True
        if self.float_lossless:
            out["float_lossless"] = True
        if self.target_bytes is not None:
            out["target_bytes"] = self.target_bytes
        if self.target_fraction is not None:
            out["target_fraction"] = self.target_fraction
        if self.keep_within:
            out["keep_within"] = self.keep_within
        if self.temporal:
            out["temporal"] = True
        return out

    def __repr__(self) -> str:
        return f"NNCCodec({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"


class Float32Codec:
    """Uncompressed baseline: every tensor's raw little-endian bytes in the nnc-fl container."""

    name = "fp32"

    def encode(self, tensors, *, fingerprint=None, exact=False, limits=None) -> bytes:
        return encode(tensors, lossless=tuple(tensors), fingerprint=fingerprint, limits=limits or DEFAULT_LIMITS)

    def decode(self, data: bytes, *, expect=None, limits=None) -> dict[str, np.ndarray]:
        return decode(data, expect=expect, limits=limits or DEFAULT_LIMITS)

    def fingerprint_of(self, data: bytes) -> bytes | None:
        return read_fingerprint(data)

    def params(self) -> dict[str, ParamValue]:
        return {}

    def __repr__(self) -> str:
        return "Float32Codec()"


register_codec(NNCCodec.name, NNCCodec)
register_codec(Float32Codec.name, Float32Codec)

__all__ = [
    "DEFAULT_LOSSLESS",
    "ENTRY_POINT_GROUP",
    "Float32Codec",
    "FormatError",
    "NNCCodec",
    "ParamValue",
    "UpdateCodec",
    "make_codec",
    "name_patterns",
    "register_codec",
    "registered_codecs",
]
