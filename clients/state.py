"""A node's side of nnc-fl: the model it holds, and how it receives a model and sends an update.

The state lives in Flower's ``context.state`` (persisted per node and run, in simulation and
deployment alike). A ``RecordDict`` can hold only ``ArrayRecord``, ``MetricRecord`` and
``ConfigRecord``; the node keeps

- ``nnc-fl.base`` (``ArrayRecord``): the global model ``G_v`` it holds, bit-exact;
- ``nnc-fl.residual`` (``ArrayRecord``): the error-feedback residual of its floating tensors;
- ``nnc-fl.increment`` (``ArrayRecord``): the decoded increment ``G_v - G_{v-1}`` when the node
  reached ``G_v`` by a chain of increments (the temporal reference of codecs with temporal
  contexts: the next increment is coded against it, and so is the node's update);
- ``nnc-fl.meta`` (``ConfigRecord``): ``version`` (int) and ``fingerprint`` (32 bytes) of ``G_v``,
  ``residual_version`` (int): the version the residual was made against, and
  ``increment_version`` (int): the version the increment leads to.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from nnc_fl import DEFAULT_LIMITS, FormatError, Limits, protocol
from nnc_fl.codecs import UpdateCodec
from nnc_fl.fingerprint import fingerprint
from nnc_fl.temporal import TemporalReference
from nnc_fl.updates import (
    CodedUpdate,
    apply_delta,
    cast_like,
    code_update,
    model_delta,
    temporal_codec,
    usable_residual,
    with_reference,
)
from nnc_fl.validation import UpdateRejected, check_schema

BASE_KEY = "nnc-fl.base"
RESIDUAL_KEY = "nnc-fl.residual"
INCREMENT_KEY = "nnc-fl.increment"
META_KEY = "nnc-fl.meta"


class Resync(Exception):
    """The node cannot rebuild the model the server describes; it asks for a keyframe instead."""


class NodeState:
    """The model a node holds (``version``, ``fingerprint``, ``base``) and its error-feedback residual,
    read from and written to the node's ``context.state``.

    A missing or damaged entry reads as "holds nothing" (the node then asks for a keyframe).
    """

    def __init__(self, state: RecordDict) -> None:
        self._state = state
        self.version: int | None = None
        self.fingerprint: bytes | None = None
        self.base: dict[str, np.ndarray] = {}
        self.residual: dict[str, np.ndarray] = {}
        self.residual_version: int | None = None
        self.increment: dict[str, np.ndarray] = {}
        self.increment_version: int | None = None
        self._reference: TemporalReference | None = None  # the increment, prepared (see temporal_reference)
        self._reference_version: int | None = None
        self._stored = False  # whether context.state holds the model described here
        meta, base = state.get(META_KEY), state.get(BASE_KEY)
        if not isinstance(meta, ConfigRecord) or not isinstance(base, ArrayRecord):
            return
        version, fp = meta.get("version"), meta.get("fingerprint")
        if not isinstance(version, int) or not isinstance(fp, bytes):
            return
        self.version, self.fingerprint, self.base = version, fp, protocol.tensors_of(base)
        self._stored = True
        residual = state.get(RESIDUAL_KEY)
        self.residual = protocol.tensors_of(residual) if isinstance(residual, ArrayRecord) else {}
        residual_version = meta.get("residual_version")
        self.residual_version = residual_version if isinstance(residual_version, int) else None
        increment, increment_version = state.get(INCREMENT_KEY), meta.get("increment_version")
        if isinstance(increment, ArrayRecord) and isinstance(increment_version, int):
            self.increment, self.increment_version = protocol.tensors_of(increment), increment_version

    def holds_nothing(self) -> bool:
        """Whether the node holds no model yet."""
        return self.version is None

    def hold(self, version: int, fingerprint_: bytes, tensors: Mapping[str, np.ndarray]) -> None:
        """Take ``tensors`` as the model ``version`` with ``fingerprint_`` and remember it."""
        self.version, self.fingerprint, self.base = version, fingerprint_, dict(tensors)
        self._state[BASE_KEY] = protocol.to_record(tensors, ArrayRecord, Array)
        self._write_meta()
        self._stored = True

    def _write_meta(self) -> None:
        meta = {"version": int(self.version), "fingerprint": bytes(self.fingerprint)}
        if self.residual_version is not None:
            meta["residual_version"] = int(self.residual_version)
        if self.increment_version is not None:
            meta["increment_version"] = int(self.increment_version)
        self._state[META_KEY] = ConfigRecord(meta)

    def _keep_increment(self, increment: Mapping[str, np.ndarray] | None, version: int | None) -> None:
        """Remember the decoded increment that leads to ``version`` (``None``: hold none)."""
        self._reference = None
        if increment is None:
            if self.increment_version is None:
                return
            self.increment, self.increment_version = {}, None
            if INCREMENT_KEY in self._state:
                del self._state[INCREMENT_KEY]
            return
        self.increment, self.increment_version = dict(increment), version
        self._state[INCREMENT_KEY] = protocol.to_record(increment, ArrayRecord, Array)

    def temporal_reference(self) -> TemporalReference | None:
        """The decoded increment that led to the model held (``None`` if the node got it otherwise),
        prepared once per message (its digest serves the chain it decodes and the update it codes)."""
        if self.increment_version is None or self.increment_version != self.version:
            return None
        if self._reference is None or self._reference_version != self.increment_version:
            self._reference, self._reference_version = TemporalReference(self.increment), self.increment_version
        return self._reference

    def adopt_shared(
        self, down: protocol.Downlink, shared_model: Callable[[], Mapping[str, np.ndarray] | None]
    ) -> None:
        """A node that holds nothing takes ``shared_model()`` (a model shipped with the app) as the
        model it holds if it is the base ``down`` builds on; otherwise nothing changes. It is
        remembered once a message built on it has been received."""
        if not self.holds_nothing() or down.base is None:
            return
        candidate = shared_model()
        if candidate is None:
            return
        tensors = {k: np.asarray(v) for k, v in candidate.items()}
        version, fp = down.base
        if fingerprint(tensors) == fp:
            self.version, self.fingerprint, self.base = version, fp, tensors

    def keep_residual(self, residual: Mapping[str, np.ndarray]) -> None:
        """Remember the error-feedback residual (replacing the previous one), made against the
        model the node holds."""
        self.residual, self.residual_version = dict(residual), self.version
        self._state[RESIDUAL_KEY] = protocol.to_record(residual, ArrayRecord, Array)
        self._write_meta()

    def residual_age(self) -> int | None:
        """Versions between the model the residual was made against and the one held (``None``:
        unknown, e.g. a residual stored by an older nnc-fl)."""
        if self.residual_version is None or self.version is None:
            return None
        return self.version - self.residual_version

    # -- receive ---------------------------------------------------------------------------------

    def receive(self, down: protocol.Downlink, content: RecordDict) -> tuple[dict[str, np.ndarray], float]:
        """Rebuild ``G_v`` from a downlink message and hold it; returns it and the decode seconds.

        Raises
        ------
        Resync
            If the node does not hold the message's base, a payload does not decode or fit, or the
            result's fingerprint differs from the server's.
        """
        try:
            if down.base is not None:
                protocol.check_base(self.version, self.fingerprint, *down.base)
            if down.kind == protocol.SAME:
                if not self._stored:
                    self.hold(self.version, self.fingerprint, self.base)
                return self.base, 0.0
            record = content.get(down.arrays_key)
            if not isinstance(record, ArrayRecord):
                raise protocol.ProtocolError(f"no ArrayRecord under {down.arrays_key!r}")
            codec = protocol.CodecSpec.from_wire(down.payload_codec, down.payload_codec_params).make()
            t0 = time.perf_counter()
            payloads = protocol.payloads_of(record, down.chain_length)
            increment = None
            if down.kind == protocol.DELTA:  # a chain of increments, applied in order
                model, reference = self.base, self.temporal_reference()
                for data in payloads:
                    decoded = codec.decode(data, expect=model, **with_reference(codec, reference))
                    check_schema(decoded, model)
                    model = apply_delta(model, decoded)
                    reference = decoded  # (an increment is the temporal reference of the next one)
                # increments, not a catch-up: the next temporal stream's reference (kept only for a
                # codec with temporal contexts: a model-sized record in the node's state)
                if temporal_codec(codec) and len(payloads) == down.version - down.base[0]:
                    increment = decoded
            else:
                limits = Limits.for_size(down.tensors, down.elements).covering(DEFAULT_LIMITS)
                model = dict(codec.decode(payloads[0], limits=limits))
            seconds = time.perf_counter() - t0
        except (protocol.ProtocolError, FormatError, UpdateRejected, ValueError) as exc:
            raise Resync(str(exc)) from exc
        if fingerprint(model) != down.fingerprint:
            raise Resync(f"fingerprint of the rebuilt model v{down.version} differs from the server's")
        self.hold(down.version, down.fingerprint, model)
        self._keep_increment(increment, down.version)
        self._write_meta()
        return model, seconds

    # -- send ------------------------------------------------------------------------------------

    def live_residual(self, residual_max_age: int = -1) -> dict[str, np.ndarray]:
        """The residual the next update carries: the kept one, unless it was made more than
        ``residual_max_age`` versions ago or its age is unknown (``-1``: whatever its age)."""
        if residual_max_age >= 0 and self.residual:
            age = self.residual_age()
            if age is None or age > residual_max_age:
                return {}
        return self.residual

    def training_start(self, residual_max_age: int = -1) -> dict[str, np.ndarray]:
        """``G_v`` plus the live residual (:meth:`live_residual`), tensor by tensor in ``G_v``'s
        dtypes: where a node trains from when the server asks it to train from its residual; its
        update, ``trained - G_v``, then holds the residual (send it with ``residual_in_model``)."""
        residual = usable_residual(self.live_residual(residual_max_age), self.base)
        moved = apply_delta({name: self.base[name] for name in residual}, residual)
        # (a residual that overflows the dtype is dropped)
        return {**self.base, **{name: t for name, t in moved.items() if np.isfinite(t).all()}}

    def send(
        self,
        trained: Mapping[str, np.ndarray],
        codec: UpdateCodec,
        nonce: bytes,
        residual_max_age: int = -1,
        *,
        residual_in_model: bool = False,
    ) -> CodedUpdate:
        """Code ``trained - G_v`` plus the live residual (:meth:`live_residual`) with ``codec``,
        bound to ``G_v`` and the ``nonce`` of the message it answers
        (:func:`nnc_fl.protocol.binding`); keep the new residual. With ``residual_in_model`` the node
        trained from :meth:`training_start`, so ``trained - G_v`` holds the residual already and
        none is added.

        Raises ``ValueError`` if ``trained`` does not have ``G_v``'s tensor names and shapes.
        """
        delta = model_delta(cast_like(trained, self.base), self.base)
        binding = protocol.binding(self.fingerprint, nonce)
        residual = {} if residual_in_model else self.live_residual(residual_max_age)
        coded = code_update(
            delta, codec, residual=residual, fingerprint=binding, temporal_reference=self.temporal_reference()
        )
        self.keep_residual(coded.residual)
        return coded
