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
    :meth:`adopt` gets the next version. ``increment`` is the coded ``G_v - G_{v-1}`` (``None``
    when ``G_v`` did not come from :meth:`advance`, so only keyframes can deliver it).
    """

    def __init__(self) -> None:
        self.tensors: dict[str, np.ndarray] = {}
        self.version = 0
        self.fingerprint = b""
        self.increment: Payload | None = None
        self._keyframe: Payload | None = None
        self._previous_fingerprint = b""
        #: node id -> version that node is known to hold
        self.node_versions: dict[int, int] = {}

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
        self.increment = None
        self._keyframe = None

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
    ) -> tuple[protocol.Downlink, Payload | None, float]:
        """The protocol record and payload that bring ``node_id`` to ``G_v``; plus encode seconds."""
        held = self.node_versions.get(node_id)
        kind = protocol.choose_downlink(held, self.version, self.increment is not None)
        payload, seconds, base_v, base_fp = None, 0.0, -1, b""
        if kind == protocol.KEYFRAME:
            payload, seconds = self.keyframe(spec)
        elif kind == protocol.DELTA:
            payload, base_v, base_fp = self.increment, self.version - 1, self._previous_fingerprint
        else:
            base_v, base_fp = self.version, self.fingerprint
        pspec = payload.spec if payload is not None else spec
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
        return down, payload, seconds

    def advance(self, target: Mapping[str, np.ndarray], spec: CodecSpec, exact: bool) -> tuple[float, float]:
        """Move to ``G_{v+1} = G_v + deq(Q(target - G_v))``; returns (encode s, decode s).

        ``target`` must already have ``G_v``'s names, shapes and dtypes (see
        :func:`nnc_fl.protocol.cast_like`). Raises ``ValueError`` if the codec's own output does
        not decode to that schema (a codec bug, never client input).
        """
        codec = spec.make()
        increment = protocol.model_delta(target, self.tensors)
        t0 = time.perf_counter()
        data = codec.encode(increment, fingerprint=self.fingerprint, exact=exact)
        t1 = time.perf_counter()
        deq = codec.decode(data)
        t2 = time.perf_counter()
        if set(deq) != set(self.tensors):
            raise ValueError(f"codec {spec.name!r} did not round-trip the tensor names")
        new = protocol.apply_delta(self.tensors, deq)
        self._previous_fingerprint = self.fingerprint
        self.tensors = new
        self.version += 1
        self.fingerprint = fingerprint(new)
        self.increment = Payload(data, spec, self.raw_bytes)
        self._keyframe = None
        return t1 - t0, t2 - t1

    def mark(self, node_id: int, version: int | None) -> None:
        """Record that ``node_id`` holds ``version`` (``None``: unknown, send a keyframe next)."""
        if version is None:
            self.node_versions.pop(node_id, None)
        else:
            self.node_versions[node_id] = version
