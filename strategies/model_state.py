"""Server-side model state: the global model ``G_v``, its coded downlinks and who holds what."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnc_fl import protocol
from nnc_fl.codecs import UpdateCodec, make_codec
from nnc_fl.fingerprint import fingerprint


@dataclass(frozen=True)
class CodecSpec:
    """A codec name and its parameters, as sent to the clients."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def params_json(self) -> str:
        """Canonical JSON text of :attr:`params`."""
        return protocol.encode_params(self.params)

    def make(self) -> UpdateCodec:
        """Build the codec (``ValueError`` for an unknown name or bad parameters)."""
        return make_codec(self.name, **self.params)


@dataclass(frozen=True)
class Payload:
    """A coded downlink stream and what it decodes with."""

    data: bytes
    spec: CodecSpec
    raw_bytes: int


class ServerModel:
    """The global model ``G_v`` and the downlink streams that bring a node to it.

    Versions count global models: every model produced by :meth:`advance` or adopted by
    :meth:`adopt` gets the next version. ``increments[u]`` is the coded ``G_u - G_{u-1}`` for the
    last ``max_chain`` versions that came from :meth:`advance` (an adopted model clears them, so
    only keyframes can deliver it). A node holding ``G_u`` gets the chain of increments
    ``u+1 .. v`` while that is smaller than the model, else a keyframe.

    With ``error_feedback``, the quantisation error of each coded increment is added to the next
    one, so downlink rounding does not accumulate in the global model.
    """

    def __init__(self, max_chain: int = 16, error_feedback: bool = True) -> None:
        if not 1 <= max_chain <= protocol.MAX_CHAIN:
            raise ValueError(f"max_chain must be in 1..{protocol.MAX_CHAIN}, got {max_chain}")
        self.tensors: dict[str, np.ndarray] = {}
        self.version = 0
        self.fingerprint = b""
        self.max_chain = max_chain
        self.error_feedback = error_feedback
        #: version u -> coded G_u - G_{u-1}; fingerprints of the versions those apply to
        self.increments: dict[int, Payload] = {}
        self._fingerprints: dict[int, bytes] = {}
        self._residual: dict[str, np.ndarray] = {}
        self._keyframe: Payload | None = None
        #: node id -> version that node is known to hold (None: unknown, it gets a keyframe)
        self.node_versions: dict[int, int | None] = {}
        #: version every node holds before first contact (a model shipped with the app), if any
        self.shared_version: int | None = None

    @property
    def raw_bytes(self) -> int:
        """fp32 size of the model (4 bytes x elements)."""
        return 4 * sum(int(t.size) for t in self.tensors.values())

    def matches(self, tensors: Mapping[str, np.ndarray]) -> bool:
        """Whether ``tensors`` is bit-identical to ``G_v``."""
        return bool(self.tensors) and fingerprint(tensors) == self.fingerprint

    def adopt(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Make ``tensors`` (coming from outside, e.g. ``initial_arrays``) the next version."""
        self.tensors = {k: np.array(v, copy=True) for k, v in tensors.items()}
        self.version += 1
        self.fingerprint = fingerprint(self.tensors)
        self.increments.clear()
        self._fingerprints = {self.version: self.fingerprint}
        self._residual = {}
        self._keyframe = None
        self.shared_version = None

    @property
    def increments_from(self) -> int | None:
        """Oldest version whose increment is kept along with all later ones (``None``: none)."""
        return min(self.increments) if self.increments else None

    def chain(self, held: int) -> list[Payload] | None:
        """Increments ``held+1 .. v`` if they share one codec spec and beat a keyframe, else None."""
        chain = [self.increments[u] for u in range(held + 1, self.version + 1)]
        specs = {(p.spec.name, p.spec.params_json) for p in chain}
        if len(specs) != 1 or sum(len(p.data) for p in chain) >= self.raw_bytes:
            return None
        return chain

    def keyframe(self, spec: CodecSpec) -> tuple[Payload, float]:
        """The exact coding of ``G_v`` (cached per version) and the seconds spent encoding it."""
        if self._keyframe is not None and self._keyframe.spec == spec:
            return self._keyframe, 0.0
        t0 = time.perf_counter()
        data = spec.make().encode(self.tensors, fingerprint=self.fingerprint, exact=True)
        self._keyframe = Payload(data, spec, self.raw_bytes)
        return self._keyframe, time.perf_counter() - t0

    def downlink(
        self, node_id: int, spec: CodecSpec, uplink: CodecSpec, arrays_key: str, server_round: int
    ) -> tuple[protocol.Downlink, list[Payload], float]:
        """The protocol record and payloads that bring ``node_id`` to ``G_v``; plus encode seconds."""
        held = self.node_versions.get(node_id, self.shared_version)
        kind = protocol.choose_downlink(held, self.version, self.increments_from)
        chain = self.chain(held) if kind == protocol.DELTA else None
        if kind == protocol.DELTA and chain is None:
            kind = protocol.KEYFRAME
        payloads: list[Payload] = []
        seconds, base_v, base_fp = 0.0, -1, b""
        if kind == protocol.KEYFRAME:
            keyframe, seconds = self.keyframe(spec)
            payloads = [keyframe]
        elif kind == protocol.DELTA:
            payloads, base_v, base_fp = chain, held, self._fingerprints[held]
        else:
            base_v, base_fp = self.version, self.fingerprint
        pspec = payloads[0].spec if payloads else spec
        down = protocol.Downlink(
            kind=kind,
            version=self.version,
            fingerprint=self.fingerprint,
            base_version=base_v,
            base_fingerprint=base_fp,
            payload_codec=pspec.name,
            payload_codec_params=pspec.params_json,
            codec=uplink.name,
            codec_params=uplink.params_json,
            arrays_key=arrays_key,
            server_round=server_round,
        )
        return down, payloads, seconds

    def advance(self, target: Mapping[str, np.ndarray], spec: CodecSpec, exact: bool) -> tuple[float, float]:
        """Move to ``G_{v+1} = G_v + deq(Q(target - G_v [+ residual]))``; returns (encode s, decode s).

        ``target`` must already have ``G_v``'s names, shapes and dtypes (see
        :func:`nnc_fl.protocol.cast_like`). Raises ``ValueError`` if the codec's own output does
        not decode to that schema (a codec bug, never client input).
        """
        codec = spec.make()
        increment = protocol.model_delta(target, self.tensors)
        if self.error_feedback and not exact:
            for name, r in self._residual.items():
                increment[name] = increment[name] + r
        t0 = time.perf_counter()
        data = codec.encode(increment, fingerprint=self.fingerprint, exact=exact)
        t1 = time.perf_counter()
        deq = codec.decode(data)
        t2 = time.perf_counter()
        if set(deq) != set(self.tensors):
            raise ValueError(f"codec {spec.name!r} did not round-trip the tensor names")
        use_feedback = self.error_feedback and not exact
        self._residual = protocol.quantisation_residual(increment, deq) if use_feedback else {}
        self.tensors = protocol.apply_delta(self.tensors, deq)
        self.version += 1
        self.fingerprint = fingerprint(self.tensors)
        self.increments[self.version] = Payload(data, spec, self.raw_bytes)
        self._fingerprints[self.version] = self.fingerprint
        for old in [u for u in self.increments if u <= self.version - self.max_chain]:
            del self.increments[old]
        for old in [u for u in self._fingerprints if u < self.version - self.max_chain]:
            del self._fingerprints[old]
        self._keyframe = None
        return t1 - t0, t2 - t1

    def mark(self, node_id: int, version: int | None) -> None:
        """Record that ``node_id`` holds ``version`` (``None``: unknown, send a keyframe next)."""
        self.node_versions[node_id] = version
