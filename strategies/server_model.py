"""The server's model and its downlink policy: ``G_v``, the increments that lead to it, who holds what.

How the server decides what a node gets lives here, and only here (:meth:`ServerModel.downlink`):

- a node known to hold ``G_v`` gets no payload (``same``);
- a node known to hold an older ``G_u`` whose increments ``u+1 .. v`` the server still keeps (at most
  ``max_chain``) gets the cheapest exact way there (``delta``): that chain (when its increments share
  one codec), or ``G_v - G_u`` coded as one exact *catch-up* increment (with the anchor grid), or a
  keyframe if that is smaller still;
- any other node (first contact, state unknown or lost, too far behind) gets a keyframe.

The strategy tells the model what happened through event methods -- :meth:`~ServerModel.adopt`,
:meth:`~ServerModel.advance`, :meth:`~ServerModel.downlink` (sent), :meth:`~ServerModel.acknowledged`,
:meth:`~ServerModel.lost` (resync, error, wrong base), :meth:`~ServerModel.went_silent` -- and never
edits the record of who holds what itself.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from logging import WARNING

import numpy as np
from flwr.supercore import log

from nnc_fl import encode as nnc_encode
from nnc_fl import inspect, protocol, steps
from nnc_fl.fingerprint import fingerprint
from nnc_fl.protocol import CodecSpec
from nnc_fl.temporal import TemporalReference
from nnc_fl.updates import (
    CodedUpdate,
    apply_delta,
    code_update,
    limits_for,
    model_delta,
    quantisation_residual,
    temporal_codec,
)

from .settings import DownlinkSettings


def choose_downlink(held_version: int | None, version: int, increments_from: int | None) -> str:
    """Which downlink kind a node holding ``held_version`` (``None``: unknown) gets for ``version``.

    ``increments_from`` is the oldest version ``u`` whose increment ``G_u - G_{u-1}`` the server
    still has together with all later ones (``None``: none). ``SAME`` if the node holds
    ``version``; ``DELTA`` (a chain of increments) if it holds a version in
    ``[increments_from - 1, version)`` within :data:`nnc_fl.protocol.MAX_CHAIN`; otherwise ``KEYFRAME``.
    """
    if held_version == version:
        return protocol.SAME
    if (
        held_version is not None
        and increments_from is not None
        and increments_from - 1 <= held_version < version
        and version - held_version <= protocol.MAX_CHAIN
    ):
        return protocol.DELTA
    return protocol.KEYFRAME


@dataclass(frozen=True)
class Payload:
    """A coded downlink stream and what it decodes with."""

    data: bytes
    spec: CodecSpec
    raw_bytes: int


#: A model value may reach this many anchor-grid steps: float32 sums of grid values stay exact.
GRID_RANGE = 2.0**22


def anchor_grid(tensors: Mapping[str, np.ndarray], names, bits: int) -> dict[str, float]:
    """Per float32 tensor of ``names``: the power of two at or below ``rms * 2**-bits`` (at least what
    keeps its values within :data:`GRID_RANGE` steps). An all-zero tensor (a zero-initialised bias)
    gets the finest power of two that holds twice the largest value of the others within that
    range (``2**-24`` if all are zero), so it may grow as large as the model's weights before it
    leaves its grid (at ``2**-24`` it left above 0.25: BatchNorm biases did)."""
    grid: dict[str, float] = {}
    model_peak = 0.0
    for name in names:
        t = np.asarray(tensors[name])
        if t.dtype != np.float32 or t.size == 0:
            continue  # float16/64 and empty tensors travel exactly
        x = t.astype(np.float64)
        rms = float(np.sqrt(np.mean(x * x)))
        g = 2.0 ** math.floor(math.log2(rms * 2.0**-bits)) if rms > 0 else 2.0**-24
        peak = float(np.abs(x).max())
        model_peak = max(model_peak, peak)
        while peak > GRID_RANGE * g:
            g *= 2
        grid[name] = g
    for name, g in grid.items():
        if not np.asarray(tensors[name]).any():  # all zero (-0.0 included)
            while 2 * model_peak > GRID_RANGE * g:
                g *= 2
            grid[name] = g
    return grid


def on_grid(t: np.ndarray, g: float) -> bool:
    """Whether every value of ``t`` is an integer multiple of ``g`` within :data:`GRID_RANGE` steps."""
    return steps.on_grid(t, g, GRID_RANGE)


class ServerModel:
    """The global model ``G_v`` and the downlink streams that bring a node to it.

    Versions count global models: every model produced by :meth:`advance` or adopted by
    :meth:`adopt` gets the next version. ``increments[u]`` is the coded ``G_u - G_{u-1}`` for the
    last ``max_chain`` versions that came from :meth:`advance` (an adopted model clears them, so
    only keyframes can deliver it).

    **Compressed keyframes (anchor grid).** With ``keyframe_grid = b`` (and a codec that supports
    grids), each float32 tensor gets a power-of-two grid step near ``rms * 2**-b`` when the model
    is adopted; the adopted model is rounded onto it, and every increment's step is a power-of-two
    multiple of it, so ``G_v`` stays on the grid exactly and a keyframe is the lossless coding of
    its integer levels (measured on the trained UC10 CNN: 22.6 % of fp32 at ``b = 4``, 28.9 % at 5;
    rounding that model onto the grid moved its accuracy by < 0.1 pp). A node that receives one
    holds exactly ``G_v``. Tensors the codec keeps lossless, other dtypes, and a tensor whose
    values leave the grid's range travel exactly. A keyframe codes each tensor at the coarsest
    power-of-two multiple of its grid that all its values share (:func:`nnc_fl.steps.coarsest_grid`);
    with ``initial_grid`` the first model is rounded onto a coarser one, which the increments keep
    while their steps are multiples of it (see :class:`strategies.settings.DownlinkSettings`).

    **Temporal contexts.** With a codec that has them (``temporal=True``), each increment is coded
    with the one before as its temporal reference (:attr:`last_increment`, decoded; clients code
    their updates against it too). A node decodes such an increment only if it holds the one
    before: the server counts a node as holding the increment of its version when the last model
    it sent that node was a chain of increments (not a keyframe or a catch-up) and the node
    confirmed it. For the other nodes each temporal increment has a plain twin: the same decoded
    values coded without the reference (:meth:`_plain_twin`), used as the first link of their chain.
    """

    def __init__(self, settings: DownlinkSettings | None = None) -> None:
        self.settings = settings if settings is not None else DownlinkSettings()
        self.tensors: dict[str, np.ndarray] = {}
        self.version = 0
        self.fingerprint = b""
        #: version u -> coded G_u - G_{u-1}; fingerprints of the versions those apply to
        self.increments: dict[int, Payload] = {}
        self._fingerprints: dict[int, bytes] = {}
        self._residual: dict[str, np.ndarray] = {}
        #: the quantised tensors' steps of the last increment (a budgeted codec may keep them)
        self._steps: dict[str, float] = {}
        self._keyframe: Payload | None = None
        #: node id -> version that node is known to hold (None: unknown, it gets a keyframe)
        self.node_versions: dict[int, int | None] = {}
        #: version every node holds before first contact (a model shipped with the app), if any
        self.shared_version: int | None = None
        #: nodes sent a model whose reply is outstanding
        self._pending: set[int] = set()
        #: tensor name -> anchor grid step (compressed keyframes); empty: exact keyframes
        self.grid: dict[str, float] = {}
        #: catch-up increments: version u -> the tensors off the grid of G_u (for u within
        #: max_chain), and, for the current version, u -> G_v - G_u on the grid, u -> coded
        self._off_grid: dict[int, dict[str, np.ndarray]] = {}
        self._sums: dict[int, dict[str, np.ndarray]] = {}
        self._catch_ups: dict[int, Payload | None] = {}
        #: the decoded G_v - G_{v-1} (None after adopt): the temporal reference of the next
        #: increment and of the clients' updates against G_v (prepared once: digest, checks)
        self.last_increment: TemporalReference | None = None
        #: version u -> increment u coded without temporal contexts (None: no exact twin), for the
        #: temporal increments among ``increments``
        self._plain: dict[int, Payload | None] = {}
        #: nodes known to hold the decoded increment of their version; per node, whether the model
        #: last sent to it was a chain of increments (None: nothing sent, or no change)
        self._holds_increment: set[int] = set()
        self._sent_chain: dict[int, bool | None] = {}

    @property
    def raw_bytes(self) -> int:
        """fp32 size of the model (4 bytes x elements)."""
        return 4 * sum(int(t.size) for t in self.tensors.values())

    def matches(self, tensors: Mapping[str, np.ndarray]) -> bool:
        """Whether ``tensors`` is bit-identical to ``G_v``."""
        return bool(self.tensors) and fingerprint(tensors) == self.fingerprint

    # -- the model moves -------------------------------------------------------------------------

    def adopt(self, tensors: Mapping[str, np.ndarray], spec: CodecSpec | None = None) -> None:
        """Make ``tensors`` (coming from outside, e.g. ``initial_arrays``) the next version.

        The first model is the one every node holds already if ``shared_initial_model`` is set
        (it is then kept exactly as given); otherwise, with compressed keyframes, the model is
        rounded onto its anchor grid (see the class notes) for the codec of ``spec``.
        """
        s = self.settings
        first = self.version == 0
        given = {k: np.asarray(v) for k, v in tensors.items()}
        self.tensors = {k: np.array(v, copy=True) for k, v in given.items()}
        self.grid = self._anchor(spec, shared=first and s.shared_initial_model)
        rounding = dict(self.grid)
        if first and self.grid and s.initial_grid is not None:
            coarse = anchor_grid(self.tensors, list(self.grid), s.initial_grid)
            rounding = {n: max(g, coarse[n]) for n, g in self.grid.items()}
        for name, g in rounding.items():
            t = self.tensors[name]
            # (+ 0.0 turns the -0.0 of small negative values into the +0.0 a decoder rebuilds)
            self.tensors[name] = (np.rint(t.astype(np.float64) / g) * g + 0.0).astype(t.dtype)
        self.version += 1
        self.fingerprint = fingerprint(self.tensors)
        self.increments.clear()
        self._plain.clear()
        self.last_increment = None
        self._fingerprints = {self.version: self.fingerprint}
        self._residual = {}
        self._steps = {}
        if rounding != self.grid and s.error_feedback:  # the coarse initial rounding: restored by increments
            self._residual = quantisation_residual({n: given[n] for n in rounding}, self.tensors)
        self._keyframe = None
        self.shared_version = self.version if first and self.settings.shared_initial_model else None
        self._off_grid.clear()
        self._remember_off_grid()

    def _anchor(self, spec: CodecSpec | None, shared: bool) -> dict[str, float]:
        s = self.settings
        if s.keyframe_grid is None or s.exact or shared or spec is None:
            return {}
        codec = spec.make()
        if not getattr(codec, "supports_grid", False):
            return {}
        exact = set(codec.lossless_names(self.tensors))
        return anchor_grid(self.tensors, [n for n in self.tensors if n not in exact], s.keyframe_grid)

    def advance(self, target: Mapping[str, np.ndarray], spec: CodecSpec) -> CodedUpdate:
        """Move to ``G_{v+1} = G_v + deq(Q(target - G_v [+ residual]))``; returns the coded increment.

        ``target`` must already have ``G_v``'s names, shapes and dtypes (see
        :func:`nnc_fl.updates.cast_like`). Raises ``ValueError`` if the codec's own output does
        not decode to that schema (a codec bug, never client input).
        """
        s = self.settings
        codec = spec.make()
        keeps = getattr(codec, "keep_within", 0) > 0  # a budgeted increment may keep the last one's steps
        reference = self.last_increment if temporal_codec(codec) and not s.exact else None
        coded = code_update(
            model_delta(target, self.tensors),
            codec,
            residual=self._residual if s.error_feedback else None,
            fingerprint=self.fingerprint,
            exact=s.exact,
            grid=self.grid or None,
            keep_steps=self._steps if keeps else None,
            temporal_reference=reference,
        )
        info = inspect(coded.data, expect=self.tensors) if keeps or reference is not None else None
        temporal = reference is not None and info.temporal_digest is not None
        self._steps = {t.name: t.step for t in info.tensors if t.step is not None} if keeps else {}
        self._residual = coded.residual
        self.tensors = apply_delta(self.tensors, coded.decoded)
        for name in [n for n, g in self.grid.items() if not on_grid(self.tensors[n], g)]:
            del self.grid[name]  # e.g. values grown beyond the grid's range: exact keyframes from now on
            self._off_grid.clear()  # catch-ups need that tensor's old values: from this version on
            log(WARNING, "nnc-fl: tensor %r left its anchor grid; its keyframes are exact from now on", name)
        self.version += 1
        self.fingerprint = fingerprint(self.tensors)
        self.increments[self.version] = Payload(coded.data, spec, self.raw_bytes)
        if temporal:
            self._plain[self.version] = self._plain_twin(coded, info, spec, codec)
        self.last_increment = TemporalReference(coded.decoded) if temporal_codec(codec) else None
        self._fingerprints[self.version] = self.fingerprint
        for old in [u for u in self.increments if u <= self.version - s.max_chain]:
            del self.increments[old]
            self._plain.pop(old, None)
        for old in [u for u in self._fingerprints if u < self.version - s.max_chain]:
            del self._fingerprints[old]
        for old in [u for u in self._off_grid if u < self.version - s.max_chain]:
            del self._off_grid[old]
        self._remember_off_grid()
        self._keyframe = None
        self._sums.clear()
        self._catch_ups.clear()
        return coded

    def _plain_twin(self, coded: CodedUpdate, info, spec: CodecSpec, codec) -> Payload | None:
        """The increment ``coded`` (temporal; ``info`` its table) coded again without a temporal
        reference: its decoded values at its own steps, plain rounding (which gives back its
        levels), exact tensors exactly; ``None`` unless it decodes to the same bits."""
        steps_ = {t.name: t.step for t in info.tensors if t.step is not None}
        exact = [t.name for t in info.tensors if t.step is None]
        data, decoded = nnc_encode(
            coded.decoded, step=steps_, lossless=exact, fingerprint=info.fingerprint,
            limits=limits_for(self.tensors), schema_bound=info.schema_bound, return_decoded=True,
            float_lossless=bool(getattr(codec, "float_lossless", False)),
        )
        if any(decoded[n].tobytes() != coded.decoded[n].tobytes() for n in coded.decoded):
            return None
        return Payload(data, spec, self.raw_bytes)

    # -- catch-up increments ---------------------------------------------------------------------

    #: Catch-ups need the off-grid tensors of past versions: only while those are at most this
    #: fraction of the model (BatchNorm statistics, counters), so the history stays small.
    OFF_GRID_SHARE = 0.125
    #: Partial sums ``G_v - G_u`` kept for the current version (each the size of the model).
    MAX_SUMS = 4

    def _remember_off_grid(self) -> None:
        """Keep the current version's off-grid tensors for later catch-ups, if they are few."""
        if not (self.settings.catch_up and self.grid):
            return
        off = {n: t for n, t in self.tensors.items() if n not in self.grid}
        if 4 * sum(int(t.size) for t in off.values()) <= self.OFF_GRID_SHARE * self.raw_bytes:
            self._off_grid[self.version] = {n: t.copy() for n, t in off.items()}

    def _grid_sum(self, held: int) -> dict[str, np.ndarray] | None:
        """``G_v - G_held`` of the grid tensors, in float64, summed from the decoded increments
        (exact: every one is a multiple of its grid step); ``None`` if one is not on the grid."""
        if held in self._sums:
            return self._sums[held]
        above = min((u for u in self._sums if u > held), default=self.version)
        total = (
            {n: self._sums[above][n].copy() for n in self.grid}
            if above in self._sums
            else {n: np.zeros(self.tensors[n].shape, np.float64) for n in self.grid}
        )
        for w in range(above, held, -1):
            increment = self._plain.get(w, self.increments[w])  # (no temporal reference needed)
            if increment is None:
                return None
            decoded = increment.spec.make().decode(increment.data, expect=self.tensors)
            for name in self.grid:
                total[name] += decoded[name]
        if not all(steps.on_grid(total[n], g, 2 * GRID_RANGE) for n, g in self.grid.items()):
            return None
        if len(self._sums) >= self.MAX_SUMS:
            del self._sums[max(self._sums)]
        self._sums[held] = total
        return total

    def _catch_up(self, held: int, spec: CodecSpec) -> Payload | None:
        """``G_v - G_held`` coded exactly as one increment (cached per version), or ``None`` where
        that cannot be exact: no anchor grid, a codec without grids, no record of ``G_held``."""
        if held in self._catch_ups:
            return self._catch_ups[held]
        codec = spec.make()
        then = self._off_grid.get(held)
        result = None
        if then is not None and getattr(codec, "supports_grid", False) and hasattr(codec, "encode_decoded"):
            sums = self._grid_sum(held)
            if sums is not None:
                result = self._code_catch_up(held, then, sums, spec, codec)
        self._catch_ups[held] = result
        return result

    def _code_catch_up(self, held, then, sums, spec, codec) -> Payload | None:
        """``G_v - G_held`` coded exactly: the grid tensors' sums at the coarsest integer multiple
        of their grid they lie on (the increments' common step, odd multiples included), the
        off-grid ones as one float difference that must restore them exactly."""
        off_now = {n: t for n, t in self.tensors.items() if n not in self.grid}
        delta = model_delta(off_now, then)
        if fingerprint(apply_delta(then, delta)) != fingerprint(off_now):
            return None  # a float difference that does not restore the value exactly
        coarse = {}
        for name, g in self.grid.items():
            delta[name] = sums[name].astype(self.tensors[name].dtype)
            coarse[name] = steps.coarsest_multiple(sums[name], g)  # the increments' common step
        delta = {n: delta[n] for n in self.tensors}
        data, decoded = codec.encode_decoded(
            delta, fingerprint=self._fingerprints[held], exact=True, limits=limits_for(self.tensors), grid=coarse
        )
        if any(decoded[n].tobytes() != delta[n].tobytes() for n in delta):
            return None
        return Payload(data, spec, self.raw_bytes)

    # -- what a node gets ------------------------------------------------------------------------

    def _chain(self, held: int, has_reference: bool) -> list[Payload] | None:
        """Increments ``held+1 .. v`` if they share one codec spec (a node decodes a chain with one
        codec), else None; the first is the plain twin of a temporal one unless the node holds
        increment ``held`` (``has_reference``), and None if it has no twin."""
        chain = [self.increments[u] for u in range(held + 1, self.version + 1)]
        if held + 1 in self._plain and not has_reference:
            chain[0] = self._plain[held + 1]
            if chain[0] is None:
                return None
        return chain if len({p.spec for p in chain}) == 1 else None

    #: A delta costing more than this share of the model is compared with the keyframe's size.
    KEYFRAME_CHECK_SHARE = 1 / 16

    def _cheapest_delta(
        self, held: int, spec: CodecSpec, has_reference: bool = False
    ) -> tuple[list[Payload] | None, float]:
        """The cheapest exact way from ``G_held`` to ``G_v`` by increments (the chain or a
        catch-up), or ``None`` if a keyframe is cheaper; plus the seconds spent coding."""
        t0 = time.perf_counter()
        options = []
        chain = self._chain(held, has_reference)
        if chain is not None:
            options.append(chain)
        if self.version - held >= 2 and self.settings.catch_up:
            catch_up = self._catch_up(held, spec)
            if catch_up is not None:
                options.append([catch_up])
        best = min(options, key=lambda c: sum(len(p.data) for p in c), default=None)
        cost = sum(len(p.data) for p in best) if best is not None else self.raw_bytes
        seconds = time.perf_counter() - t0
        if cost > self.KEYFRAME_CHECK_SHARE * self.raw_bytes:
            keyframe, keyframe_s = self._keyframe_payload(spec)
            seconds += keyframe_s
            if len(keyframe.data) <= cost:
                return None, seconds
        return best, seconds

    def _keyframe_payload(self, spec: CodecSpec) -> tuple[Payload, float]:
        """The exact coding of ``G_v`` (cached per version) and the seconds spent encoding it."""
        if self._keyframe is not None and self._keyframe.spec == spec:
            return self._keyframe, 0.0
        t0 = time.perf_counter()
        codec = spec.make()
        kwargs = {}
        if self.grid and getattr(codec, "supports_grid", False):  # each tensor at its coarsest exact grid
            kwargs["grid"] = {n: steps.coarsest_grid(self.tensors[n], g) for n, g in self.grid.items()}
        data = codec.encode(
            self.tensors, fingerprint=self.fingerprint, exact=True, limits=limits_for(self.tensors), **kwargs
        )
        self._keyframe = Payload(data, spec, self.raw_bytes)
        return self._keyframe, time.perf_counter() - t0

    def downlink(
        self, node_id: int, spec: CodecSpec, arrays_key: str, server_round: int, nonce: bytes
    ) -> tuple[protocol.Downlink, list[Payload], float]:
        """The protocol record and payloads that bring ``node_id`` to ``G_v``; plus encode seconds.

        ``spec`` is the round's codec: it codes a keyframe, and the node codes its reply with it;
        ``nonce`` is the message's fresh nonce. The node's reply is expected next (see
        :meth:`went_silent`).
        """
        held = self.node_versions.get(node_id, self.shared_version)
        kind = choose_downlink(held, self.version, min(self.increments) if self.increments else None)
        has_reference = node_id in self._holds_increment
        chain, seconds = self._cheapest_delta(held, spec, has_reference) if kind == protocol.DELTA else (None, 0.0)
        if kind == protocol.DELTA and chain is None:
            kind = protocol.KEYFRAME
        payloads: list[Payload] = []
        base_v, base_fp = -1, b""
        if kind == protocol.KEYFRAME:
            keyframe, keyframe_s = self._keyframe_payload(spec)
            payloads, seconds = [keyframe], seconds + keyframe_s
        elif kind == protocol.DELTA:
            payloads, base_v, base_fp = chain, held, self._fingerprints[held]
        else:
            base_v, base_fp = self.version, self.fingerprint
        # a chain of increments leaves the node holding increment v (a catch-up or keyframe does not)
        chain_sent = kind == protocol.DELTA and len(payloads) == self.version - base_v
        self._sent_chain[node_id] = None if kind == protocol.SAME else chain_sent
        pspec = payloads[0].spec if payloads else spec
        down = protocol.Downlink(
            kind=kind,
            version=self.version,
            fingerprint=self.fingerprint,
            base_version=base_v,
            base_fingerprint=base_fp,
            payload_codec=pspec.name,
            payload_codec_params=pspec.params_json,
            codec=spec.name,
            codec_params=spec.params_json,
            arrays_key=arrays_key,
            server_round=server_round,
            nonce=nonce,
            tensors=len(self.tensors),
            elements=sum(int(t.size) for t in self.tensors.values()),
            payloads=len(payloads),
        )
        self._pending.add(node_id)
        return down, payloads, seconds

    # -- what the server learns about a node -----------------------------------------------------

    def acknowledged(self, node_id: int, version: int, fingerprint_: bytes) -> bool:
        """The node says it holds ``(version, fingerprint)``: true if that is ``G_v``, which it
        then gets no payload for; otherwise its state counts as unknown (keyframe next)."""
        holds = (version, fingerprint_) == (self.version, self.fingerprint)
        self.node_versions[node_id] = self.version if holds else None
        chain = self._sent_chain.pop(node_id, None)
        if not holds or chain is False:
            self._holds_increment.discard(node_id)
        elif chain:
            self._holds_increment.add(node_id)
        return holds

    def lost(self, node_id: int) -> None:
        """The node's model is unknown (it asked for a resync, failed, or sent a wrong base)."""
        self.node_versions[node_id] = None
        self._holds_increment.discard(node_id)
        self._sent_chain.pop(node_id, None)

    def forget_absent(self, present: Iterable[int]) -> None:
        """Drop what is known of nodes that are no longer connected (they get a keyframe if they return)."""
        present = set(present)
        for node in [n for n in self.node_versions if n not in present]:
            del self.node_versions[node]
            self._holds_increment.discard(node)

    def went_silent(self, answered: Iterable[int]) -> None:
        """Nodes sent a model that did not reply may or may not have applied it: keyframe next."""
        for node in self._pending - set(answered):
            self.lost(node)
        self._pending.clear()


__all__ = ["Payload", "ServerModel", "choose_downlink"]
