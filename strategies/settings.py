"""The settings of :class:`strategies.CompressedStrategy`, grouped and checked at construction.

Three frozen dataclasses, each refusing an impossible value with a ``ValueError`` or ``TypeError``
when it is built, so a mistake shows up in the ServerApp's first line rather than in round 5:

- :class:`CodecSettings`: which codec codes the updates, its parameters, a per-round schedule;
- :class:`DownlinkSettings`: how the global model reaches the nodes;
- :class:`ValidationSettings`: what an update must pass before it may touch the global model.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from nnc_fl.auth import check_key, read_keyring
from nnc_fl.codecs import STATISTICS, ParamValue, name_patterns
from nnc_fl.protocol import MAX_CHAIN, MAX_RESIDUAL_AGE, CodecSpec
from nnc_fl.validation import NONNEGATIVE

CodecSchedule = Callable[[int], Mapping[str, ParamValue]]

#: What ``CompressedStrategy(inner)`` codes with when no parameters are given, per codec: for "nnc",
#: a step of twice each tensor's RMS (about 2-3 % of fp32 uplink on UC10, see the README), not the
#: standalone ``nnc_fl.encode`` default (RMS / 8, a conservative step for arbitrary tensors), and
#: exact float tensors (keyframes off the anchor grid, BatchNorm statistics) in mode float-lossless
#: (FORMAT.md), about 17 % smaller than raw; both ends run nnc-fl, so the mode is always readable.
#: Updates and increments use the schema-bound tensor table (FORMAT.md, flag bit 2): both ends hold
#: the base model, so names, dtypes and shapes are referenced, not repeated (1.5-3.4 % fewer bytes
#: per update of the UC10 CNNs); keyframes stay self-contained. The exactly coded tensors of updates
#: and increments (BatchNorm running statistics) are rounded up to 8 mantissa bits
#: (``lossless_bits=8``, never down, so a variance stays >= 0): running statistics do not enter
#: training and are mostly replaced every round: the UC10 BatchNorm CNN (IID and Dirichlet 0.5,
#: seeds 0-2) reached the same final accuracies (one differed by 0.01 pp) with ~1.9 % fewer uplink
#: and 20-22 % fewer increment bytes (README, "Running statistics rounded up"); keyframes stay exact.
DEFAULT_PARAMS: dict[str, dict[str, ParamValue]] = {
    "nnc": {"rel_step": 2.0, "float_lossless": True, "schema_bound": True, "lossless_bits": 8}
}
#: Added to :data:`DEFAULT_PARAMS` for the updates (uplink) only, when no parameters are given: for
#: "nnc", one step per update (``rel_to="update"``: ``rel_step`` times the RMS of the whole update,
#: the allocation with the least squared error for the bytes). Without a budget it sent 4-9 % fewer
#: uplink bytes at the same accuracy (UC10 IID, Dirichlet, cross-device and the BatchNorm CNN); under
#: a budget of 0.5 % of fp32 it lost 1.7-2.1 pp less accuracy than a step per tensor (README, "Low
#: rates"). The global increments keep a step per tensor (one step per increment made them larger).
#: And rate-distortion rounding at a light ``rd_lambda=0.02`` (a value rounded up is coded one level
#: lower where that saves enough bits; the error goes to the node's residual): 9-12 % fewer uplink
#: bytes in the UC10 and UC14A runs (the BatchNorm CNN from 3.08 % to 2.78 % of fp32) at accuracies
#: within the seeds' spread of the default before it, cross-device 0.2 pp lower on average (README,
#: "Light rate-distortion rounding"). The increments stay rounded to nearest: rounding them so
#: (rd_lambda 0.1-0.15) cost 0.3-1.1 pp (README, "Results").
DEFAULT_UPLINK_PARAMS: dict[str, dict[str, ParamValue]] = {"nnc": {"rel_to": "update", "rd_lambda": 0.02}}


#: Added to the global increments' parameters under a downlink budget (``DownlinkSettings.target``)
#: where neither the round's parameters nor ``DownlinkSettings.params`` set them. For "nnc": one
#: step per increment (``rel_to="update"``, when the round's step is a ``rel_step``): under a budget
#: a step per tensor lost 2-4 pp of UC10 accuracy against it (README, "Low rates"); and the last
#: increment's steps kept while the increment at them lies within 20 % below the budget
#: (``keep_within``), so that a node that missed rounds gets one catch-up increment on that step
#: instead of the chain (README, "Increments that keep their steps").
BUDGET_DOWNLINK_PARAMS: dict[str, dict[str, ParamValue]] = {"nnc": {"rel_to": "update", "keep_within": 0.2}}


#: Codecs whose nodes train from the global model plus their error-feedback residual unless told
#: otherwise (``CodecSettings.train_from_residual=None``). Measured on UC10 (IID and Dirichlet 0.5,
#: the plain and the BatchNorm CNN, cross-device) and UC14A IID, 3-5 seeds each, against the same
#: settings without it: under a budget of 0.5 % of fp32 it gained 0.4 pp (IID) to 3 pp (Dirichlet)
#: of last-3 accuracy; with the default step it stayed within the seeds' spread (README, "Training
#: from the residual").
TRAIN_FROM_RESIDUAL_CODECS = frozenset({"nnc"})


#: Cross-device rounds (few of the connected nodes train each round) take a finer default uplink
#: step: a node's error-feedback residual reaches the model only when that node trains again, ~1/share
#: rounds later, so what an update's quantisation loses is corrected late. Measured on UC10 with 100
#: nodes, 10 % per round, 30 rounds (seeds 0-4): ``rel_step`` 2.0 -0.80 +- 0.60 pp final accuracy
#: against fp32, 1.4 -0.54 +- 0.20, 1.2 -0.34 +- 0.42 at 2.57 % uplink (README, "Cross-device").
#: (share, rel_step) at the two ends; log-linear between; only with the default parameters.
PARTICIPATION_REL_STEP = ((0.1, 1.2), (0.5, 2.0))


def participation_rel_step(share: float) -> float:
    """The default uplink ``rel_step`` of a round that trains ``share`` (0 < share <= 1) of the
    connected nodes: 2.0 from half of them up, 1.2 at a tenth or fewer, log-linear between."""
    (lo_share, lo_step), (hi_share, hi_step) = PARTICIPATION_REL_STEP
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share of nodes trained must be in (0, 1], got {share!r}")
    t = (math.log(share) - math.log(lo_share)) / (math.log(hi_share) - math.log(lo_share))
    return round(lo_step + (hi_step - lo_step) * min(1.0, max(0.0, t)), 3)


def _frozen_mapping(obj: object, name: str) -> None:
    value = getattr(obj, name)
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping of parameter names to values, got {type(value).__name__}")
    object.__setattr__(obj, name, MappingProxyType(dict(value)))


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _positive(value: object, what: str, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a finite number > 0{' or None' if allow_none else ''}, got {value!r}")


#: A per-update byte budget: a float in (0, 1) is a share of the fp32 size of what is coded
#: (4 bytes x elements), an int >= 1 a number of bytes.
Budget = float | int

#: The codec parameters that carry a budget to the codec (and, in the round config, to the clients).
BUDGET_PARAMS = ("target_fraction", "target_bytes")


def check_budget(value: object, what: str) -> Budget | None:
    """``value`` as a budget (``None`` stays ``None``): a float in (0, 1) or an int >= 1.

    A float of 1 or more is refused rather than read as bytes (give bytes as an int), so that
    ``0.005`` and ``5000`` cannot be confused.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a fraction of the fp32 size (a float in (0, 1)) or bytes (an int), "
                        f"got {value!r}")
    if isinstance(value, numbers.Integral):
        if int(value) < 1:
            raise ValueError(f"{what} in bytes must be at least 1, got {value!r}")
        return int(value)
    f = float(value)
    if not 0.0 < f < 1.0:  # NaN fails too
        raise ValueError(f"{what} as a float is a fraction of the fp32 size and must be in (0, 1), got {value!r} "
                         f"(give a byte budget as an int)")
    return f


#: Bounds of a budget schedule: segments, rounds per segment, and the length of its text form.
MAX_SCHEDULE_SEGMENTS = 64
MAX_SCHEDULE_ROUNDS = 1_000_000
MAX_SCHEDULE_TEXT = 1024


@dataclass(frozen=True)
class BudgetSchedule:
    """A rate schedule: the per-update budget changes with the round.

    ``segments`` are ``(budget, rounds)`` pairs taken in order: the first budget for rounds
    ``1 .. rounds``, the next for the following rounds, and so on; the last segment's budget
    holds from then on (its ``rounds`` may be ``None``). Budgets are as for ``target_uplink``
    (floats in (0, 1): shares of fp32; ints: bytes), all of one kind. The text form, also what
    :meth:`parse` reads and ``nnc-fl run --target-uplink`` takes, is ``BUDGETxROUNDS,...``::

        BudgetSchedule.parse("0.01x4,0.00375")   # 1 % for rounds 1-4, then 0.375 %: 0.5 % over 20 rounds
    """

    segments: tuple[tuple[Budget, int | None], ...]

    def __post_init__(self) -> None:
        segments = tuple(self.segments) if isinstance(self.segments, (list, tuple)) else None
        if not segments or len(segments) > MAX_SCHEDULE_SEGMENTS:
            raise ValueError(f"a budget schedule needs 1..{MAX_SCHEDULE_SEGMENTS} (budget, rounds) segments, "
                             f"got {self.segments!r}")
        checked = []
        for i, segment in enumerate(segments):
            if not isinstance(segment, (list, tuple)) or len(segment) != 2:
                raise ValueError(f"schedule segment {i} must be a (budget, rounds) pair, got {segment!r}")
            budget, rounds = check_budget(segment[0], f"schedule segment {i}'s budget"), segment[1]
            last = i == len(segments) - 1
            if rounds is None and not last:
                raise ValueError(f"only the last schedule segment may leave its rounds open, segment {i} does")
            if rounds is not None and (isinstance(rounds, bool) or not isinstance(rounds, int)
                                       or not 1 <= rounds <= MAX_SCHEDULE_ROUNDS):
                raise ValueError(f"schedule segment {i}'s rounds must be an integer in 1..{MAX_SCHEDULE_ROUNDS}, "
                                 f"got {rounds!r}")
            checked.append((budget, rounds))
        if len({type(b) for b, _ in checked}) > 1:
            raise ValueError("a budget schedule's budgets must all be fractions of fp32 or all bytes, not both")
        object.__setattr__(self, "segments", tuple(checked))

    @classmethod
    def parse(cls, text: str) -> BudgetSchedule:
        """Read ``BUDGETxROUNDS,...,BUDGET`` (an int budget is bytes, else a fraction of fp32)."""
        if not isinstance(text, str) or not text or len(text) > MAX_SCHEDULE_TEXT:
            raise ValueError(f"a budget schedule is a text of 1..{MAX_SCHEDULE_TEXT} characters such as "
                             f"'0.01x4,0.00375', got {text!r:.80}")
        segments: list[tuple[Budget, int | None]] = []
        for part in text.split(","):
            budget, sep, rounds = part.strip().partition("x")
            try:
                value: Budget = int(budget) if budget.strip().isdigit() else float(budget)
                count = int(rounds) if sep else None
            except ValueError:
                raise ValueError(f"budget schedule segment {part!r:.80} is not BUDGET or BUDGETxROUNDS "
                                 f"(e.g. 0.01x4)") from None
            segments.append((value, count))
        return cls(tuple(segments))

    def __call__(self, server_round: int) -> Budget:
        """The budget of ``server_round`` (1-based)."""
        r = server_round
        for budget, rounds in self.segments:
            if rounds is None or r <= rounds:
                return budget
            r -= rounds
        return self.segments[-1][0]

    def mean(self, rounds: int) -> float:
        """The mean budget over rounds ``1 .. rounds`` (what a run of that length sends per update)."""
        return sum(self(r) for r in range(1, rounds + 1)) / rounds

    @property
    def smallest(self) -> Budget:
        """The smallest budget the schedule ever sets."""
        return min(b for b, _ in self.segments)

    def __str__(self) -> str:
        return ",".join(f"{b}x{n}" if n is not None else f"{b}" for b, n in self.segments)


def check_target(value: object, what: str) -> Budget | BudgetSchedule | None:
    """A budget (:func:`check_budget`) or a :class:`BudgetSchedule` (kept as it is)."""
    return value if isinstance(value, BudgetSchedule) else check_budget(value, what)


def budget_params(value: Budget | None) -> dict[str, ParamValue]:
    """The codec parameters of a budget (see :func:`check_budget`)."""
    if value is None:
        return {}
    return {"target_bytes": value} if isinstance(value, int) else {"target_fraction": value}


def describe(settings: object) -> str:
    """``name=value`` for every field of a settings dataclass, for logs."""
    parts = []
    for f in fields(settings):  # type: ignore[arg-type]
        value = getattr(settings, f.name)
        if f.name == "auth_keys":  # never log keys
            shown = "None" if value is None else f"<{len(value)} keys: {', '.join(sorted(value))}>"
        elif isinstance(value, Mapping):
            shown = repr(dict(value))
        elif isinstance(value, BudgetSchedule):
            shown = f"BudgetSchedule({str(value)!r})"
        elif callable(value):
            shown = f"<{getattr(value, '__qualname__', type(value).__name__)}>"
        else:
            shown = repr(value)
        parts.append(f"{f.name}={shown}")
    return ", ".join(parts)


@dataclass(frozen=True)
class CodecSettings:
    """Which codec codes the model transfers, and with which parameters.

    Parameters
    ----------
    name : str
        A codec registered in :mod:`nnc_fl.codecs` (``"nnc"``, ``"fp32"``, or a baseline).
    params : mapping, optional
        The codec's parameters (scalars), e.g. ``{"rel_step": 3.0, "rd_lambda": 0.05}``; ``None``
        (the default) takes :data:`DEFAULT_PARAMS` for the codec (and :data:`DEFAULT_UPLINK_PARAMS`
        for the updates, whose ``rel_step`` then follows the share of the connected nodes a round
        trains: :func:`participation_rel_step`), ``{}`` the codec's own defaults.
    schedule : callable, optional
        ``f(server_round) -> params`` merged over ``params`` for that round's uplink and downlink,
        so the server can change the rate per round.
    target_uplink : float or int or BudgetSchedule, optional
        Rate control of the updates: a budget per update, a float in (0, 1) as a share of its fp32
        size or an int as bytes. Each client codes its update at one common multiple of the steps
        ``params`` give, the finest that fits (:mod:`nnc_fl.rate`); the budget reaches the clients
        as a codec parameter (``target_fraction`` / ``target_bytes``) in the round's codec spec.
        A :class:`BudgetSchedule` changes the budget with the round (e.g. more bits in the first
        rounds). Needs a codec with rate control (``"nnc"``). ``None`` (the default): no budget.
        The downlink has its own (:attr:`DownlinkSettings.target`).
    residual_max_age : int, optional
        A node drops its error-feedback residual (the quantisation error it carries into its next
        update) when that was made against a model more than this many versions older than the one
        it trains on; ``None`` (the default) keeps it whatever its age. For cross-device settings,
        where a node trains every ~10 rounds (see the README for what it measured).
    train_from_residual : bool, optional
        Nodes start each round's training from the global model plus their error-feedback residual
        (what their earlier updates' quantisation has not yet delivered) instead of the global
        model, and code ``trained - global``, which then holds the residual already: the same
        bytes and bookkeeping as error feedback, but the gradients are taken where the node's
        own contribution has brought the model (README, "Training from the residual"). ``None``
        (the default): on for the codecs in :data:`TRAIN_FROM_RESIDUAL_CODECS` (``"nnc"``), off
        for the others (the baselines keep the error feedback they were published with).
    """

    name: str = "nnc"
    params: Mapping[str, ParamValue] | None = None
    schedule: CodecSchedule | None = None
    target_uplink: Budget | BudgetSchedule | None = None
    residual_max_age: int | None = None
    train_from_residual: bool | None = None
    #: parameters only the updates are coded with (DEFAULT_UPLINK_PARAMS when ``params`` is None;
    #: else none)
    uplink_params: Mapping[str, ParamValue] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"codec name must be a string, got {self.name!r}")
        uplink: Mapping[str, ParamValue] = {}
        if self.params is None:
            object.__setattr__(self, "params", dict(DEFAULT_PARAMS.get(self.name, {})))
            uplink = DEFAULT_UPLINK_PARAMS.get(self.name, {})
        object.__setattr__(self, "uplink_params", MappingProxyType(dict(uplink)))
        _frozen_mapping(self, "params")
        # lists of names or patterns (e.g. lossless=[...]) travel to the clients as comma-separated text
        params = {k: ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v for k, v in self.params.items()}
        object.__setattr__(self, "params", MappingProxyType(params))
        if self.schedule is not None and not callable(self.schedule):
            raise TypeError("schedule must be a callable f(server_round) -> codec parameters")
        if self.residual_max_age is not None and (
            isinstance(self.residual_max_age, bool)
            or not isinstance(self.residual_max_age, int)
            or not 0 <= self.residual_max_age <= MAX_RESIDUAL_AGE
        ):
            raise ValueError(f"residual_max_age must be an integer in 0..{MAX_RESIDUAL_AGE} or None, "
                             f"got {self.residual_max_age!r}")
        if self.train_from_residual is None:
            object.__setattr__(self, "train_from_residual", self.name in TRAIN_FROM_RESIDUAL_CODECS)
        if not isinstance(self.train_from_residual, bool):
            raise TypeError(f"train_from_residual must be True, False or None, got {self.train_from_residual!r}")
        object.__setattr__(self, "target_uplink", check_target(self.target_uplink, "target_uplink"))
        spec = CodecSpec(self.name, self.params).merged(self.uplink_params)
        spec.params_json  # noqa: B018 -- parameters that cannot travel as JSON scalars fail now
        spec.make()  # unknown codec or bad parameters: fail now
        _check_budget_codec(spec, self.budget(1), "target_uplink")

    def budget(self, server_round: int) -> Budget | None:
        """The uplink budget of ``server_round`` (``None``: no rate control)."""
        t = self.target_uplink
        return t(server_round) if isinstance(t, BudgetSchedule) else t

    def smallest_budget(self) -> Budget | None:
        """The smallest uplink budget of any round (``None``: no rate control)."""
        t = self.target_uplink
        return t.smallest if isinstance(t, BudgetSchedule) else t

    def spec(self, server_round: int, *, target: bool = True, share: float | None = None) -> CodecSpec:
        """The codec (name and parameters) of ``server_round``; with ``target`` (the uplink's), the
        uplink's own parameters and budget are among them; ``share``, the share of the connected
        nodes the round trains, sets the uplink's default step (:func:`participation_rel_step`;
        only when the default parameters are in use)."""
        base = CodecSpec(self.name, {**self.params, **self.uplink_params} if target else self.params)
        if target and share is not None and self.uplink_params and "rel_step" in self.params:
            base = base.merged({"rel_step": participation_rel_step(share)})
        if self.schedule is not None:
            base = base.merged(self.schedule(server_round))
        return base.merged(budget_params(self.budget(server_round))) if target else base


def _check_budget_codec(spec: CodecSpec, budget: Budget | None, what: str) -> None:
    """Refuse a budget for a codec without rate control (``ValueError`` naming ``what``)."""
    if budget is None:
        return
    try:
        spec.merged(budget_params(budget)).make()
    except ValueError as exc:
        raise ValueError(f"{what} needs a codec with rate control (nnc); codec {spec.name!r}: {exc}") from exc


@dataclass(frozen=True)
class DownlinkSettings:
    """How the global model reaches the nodes.

    Parameters
    ----------
    params : mapping
        Codec parameters for the global increment that override the round's (e.g. a coarser
        ``rel_step``); the uplink keeps the round's parameters.
    exact : bool
        Code the global increment losslessly instead of with the round's rate.
    error_feedback : bool
        Add each increment's quantisation error to the next one (server-side error feedback), so
        downlink rounding does not accumulate in the global model.
    max_chain : int
        A node that missed rounds gets at most this many increments chained in one message (only
        while they are together smaller than the model); further behind, it gets a keyframe.
        At most :data:`nnc_fl.protocol.MAX_CHAIN`, the bound a node enforces.
    shared_initial_model : bool
        Every node already holds ``initial_arrays`` (e.g. shipped with the app; pair with
        ``clients.make_nnc_mod(shared_model=...)``), so its first message is the chain of
        increments since then instead of a keyframe. A node that does not hold it (its fingerprint
        differs) asks for a resync and gets a keyframe. The initial model is then kept exactly.
    keyframe_grid : int or None
        Compressed keyframes: the global model lives on a per-tensor power-of-two grid near
        ``rms * 2**-keyframe_grid`` (the initial model is rounded onto it) and a keyframe codes its
        integer levels losslessly (see :class:`strategies.server_model.ServerModel`). ``None``:
        the initial model is kept bit for bit and keyframes are exact fp32.
    initial_grid : int or None
        With ``keyframe_grid``: round the initial model (when it is not shared) onto a coarser
        per-tensor power of two near ``rms * 2**-initial_grid`` instead (at least the anchor grid),
        for models trained from a random initialisation, whose first keyframes then cost
        ``keyframe_grid - initial_grid`` fewer bits a value; keyframes of later versions too, while
        the increments' steps stay multiples of the coarser grid (a keyframe codes each tensor at
        the coarsest power-of-two multiple of its grid it lies on). What the rounding moved goes
        into the downlink's error feedback, so a pretrained initial model is restored by the
        following increments. ``None`` (the default): the anchor grid only. 0..20, at most
        ``keyframe_grid``.
    catch_up : bool
        A node two or more versions behind may get ``G_v - G_u`` coded as one exact increment
        (a *catch-up*) instead of the chain, when that is smaller (with the anchor grid only:
        there the sum of the increments is exact; see :class:`strategies.server_model.ServerModel`).
        Tensors off the grid (e.g. BatchNorm statistics) must be restored exactly by one float32
        difference; where they moved too much for that, the chain or a keyframe is sent instead.
    target : float or int, optional
        Rate control of the global increments: a budget per increment, a float in (0, 1) as a share
        of the model's fp32 size or an int as bytes; each increment is coded at one common multiple
        of its steps, the finest that fits (:mod:`nnc_fl.rate`). Keyframes are not affected. With
        ``keyframe_grid``, increment steps are then integer multiples of the anchor grid (at least
        the grid itself), so where they are only a few grid steps the size moves in coarse jumps
        and lands further below the budget. For ``"nnc"``, :data:`BUDGET_DOWNLINK_PARAMS` apply
        where the round's parameters and ``params`` do not set them (one step per increment, the
        last increment's steps kept while they fit). ``None`` (the default): no budget
        (the uplink's ``target_uplink`` does not apply to the downlink).
    """

    params: Mapping[str, ParamValue] = field(default_factory=dict)
    exact: bool = False
    error_feedback: bool = True
    max_chain: int = MAX_CHAIN
    shared_initial_model: bool = False
    keyframe_grid: int | None = 5
    initial_grid: int | None = None
    catch_up: bool = True
    target: Budget | None = None

    def __post_init__(self) -> None:
        _frozen_mapping(self, "params")
        if not isinstance(self.catch_up, bool):
            raise TypeError(f"catch_up must be a bool, got {self.catch_up!r}")
        object.__setattr__(self, "target", check_budget(self.target, "target_downlink"))
        if self.target is not None and self.exact:
            raise ValueError("a downlink budget (target) contradicts exact increments (exact=True)")
        if isinstance(self.max_chain, bool) or not isinstance(self.max_chain, int):
            raise TypeError(f"max_chain must be an integer, got {self.max_chain!r}")
        if not 1 <= self.max_chain <= MAX_CHAIN:
            raise ValueError(f"max_chain must be in 1..{MAX_CHAIN}, got {self.max_chain}")
        if self.keyframe_grid is not None and (
            isinstance(self.keyframe_grid, bool) or not isinstance(self.keyframe_grid, int)
            or not 0 <= self.keyframe_grid <= 20
        ):
            raise ValueError(f"keyframe_grid must be an integer in 0..20 or None, got {self.keyframe_grid!r}")
        if self.initial_grid is not None:
            if isinstance(self.initial_grid, bool) or not isinstance(self.initial_grid, int):
                raise TypeError(f"initial_grid must be an integer or None, got {self.initial_grid!r}")
            if self.keyframe_grid is None or not 0 <= self.initial_grid <= self.keyframe_grid:
                raise ValueError(
                    f"initial_grid must be in 0..keyframe_grid ({self.keyframe_grid}), got {self.initial_grid}"
                )

    def spec(self, round_spec: CodecSpec) -> CodecSpec:
        """The codec that codes a global increment in a round whose codec (without the uplink
        budget) is ``round_spec``: its parameters, ``params`` over them, and the downlink budget
        (with :data:`BUDGET_DOWNLINK_PARAMS` where neither sets those)."""
        given = {**round_spec.params, **self.params}
        defaults = {}
        if self.target is not None:
            defaults = {k: v for k, v in BUDGET_DOWNLINK_PARAMS.get(round_spec.name, {}).items() if k not in given}
            if "rel_step" not in given:  # one step per increment is relative to the increment's RMS
                defaults.pop("rel_to", None)
        return round_spec.merged({**defaults, **self.params, **budget_params(self.target)})

    def check_codec(self, round_spec: CodecSpec) -> None:
        """Refuse a downlink budget for a codec without rate control, or bad ``params``."""
        _check_budget_codec(round_spec.merged(self.params), self.target, "target_downlink")
        self.spec(round_spec).make()


@dataclass(frozen=True)
class ValidationSettings:
    """What an uploaded update must pass before it may touch the global model.

    Every check works from the first round and with two updates per round; see the README's
    "Threat model and defences" for the order of the checks and the rejection codes.

    Parameters
    ----------
    norm_clip_ratio : float or None
        An update whose L2 norm exceeds ``norm_clip_ratio`` times the norm of honest updates
        (learned from the accepted ones across rounds, see :class:`nnc_fl.references.NormReference`)
        is scaled down to that bound (norm clipping, as Flower's DP clipping wrappers do) and
        counted as ``clipped``; ``None``: no clipping.
    norm_reject_ratio : float or None
        An update beyond ``norm_reject_ratio`` times that norm is refused (``norm``): no honest
        update came near it in the measured runs (largest: 6.7x, UC14A Dirichlet). ``None``: off.
    direction_spread : float or None
        A node whose updates point against the consensus of recently accepted updates on average,
        below the other nodes' median by more than ``direction_spread`` standard deviations of an
        honest node's mean (see :class:`nnc_fl.references.DirectionReference`), is refused
        (``direction``; a sign-flipping client). 3.5: no honest update refused in the measured
        UC10 / UC14A runs (3.0 refused one in a label-skewed UC14A run). ``None``: off.
    agreement_spread : float or None
        A node whose updates point against the *other updates of their own rounds* on average
        (:func:`nnc_fl.references.agreements`; in a cohort of two, its partner), below the other
        nodes' agreement in the rounds it was not in by more than ``agreement_spread`` standard
        deviations (see :class:`nnc_fl.references.AgreementReference`), is refused (``agreement``).
        Updates of one round start from the same model, so this catches a sign flipper where
        successive rounds oscillate and the direction check has no reference (a BatchNorm CNN in
        a small federation). ``None``: off.
    weight_ratio : float or None
        Cap each reply's weighting metric (``num-examples`` for FedAvg) at ``weight_ratio`` times
        the median of the other replies' and times what this rule credited the node with before;
        ``None``: no cap. Non-finite, zero or negative weights are always refused (``weight``).
    dissent_weight_ratio : float or None
        After ``weight_ratio``, the one node of a round whose agreements with the other updates
        of its rounds average below zero while the other nodes' average above
        (:meth:`nnc_fl.references.AgreementReference.dissenter`; needs ``agreement_spread``) is
        credited at most ``dissent_weight_ratio`` times the others' median: a sign flipper, with
        or without a bought weight, counts half as much as its partner before its mean is far
        enough below theirs to be refused (a weaker sign than a refusal, so it only reweights).
        Its history stays the claim as capped by ``weight_ratio``: a node that dissents round
        after round is not credited less and less. Replayed on the agreements traced from 35
        runs: no honest node singled out in UC10 (IID, Dirichlet, BatchNorm, cross-device), UC14A
        IID or the clean digits BatchNorm federation; 3-9 of the 50 honest updates of each UC14A
        two-class Dirichlet run, whose minority-class nodes point against the rest. ``None``: off.
    max_update_norm : float or None
        Absolute bound on an update's L2 norm; ``None`` for no bound.
    outlier_threshold : float or None
        Robust z-score (median/MAD over the round's update norms) above which an update is
        refused; ``None`` (the default) switches the test off: the norm bound replaces it and,
        unlike it, did not refuse honest non-IID updates in the measured runs.
    outlier_min_count : int
        Fewest updates in a round for the outlier test to run (at least 3).
    nonnegative : str or sequence of str
        ``fnmatch`` patterns (or one comma-separated string) of the tensors that must hold no
        negative value in a reconstructed update or the aggregate (``range``): by default the
        running variances of normalisation layers, which a sign-flipped update drives below zero
        (one negative variance makes the model's outputs NaN). ``""``: no such check.
    statistics : str or sequence of str
        ``fnmatch`` patterns of the tensors gradients do not train (by default
        :data:`nnc_fl.codecs.STATISTICS`, the running means and variances of normalisation layers).
        Their deltas follow each node's data, not the loss, and in a BatchNorm CNN they are most of
        an update's norm (UC10, round 1: 23-28 of update norms of 25-29): the norm, clipping, outlier,
        direction and agreement checks judge the other, trained tensors, and the statistics have a
        norm reference of their own (same ratios). ``max_update_norm`` bounds the whole update.
    trusted_loss : callable, optional
        ``trusted_loss(tensors) -> float``: the loss of a model (a mapping name -> numpy array) on
        a small data set the server holds and trusts. With it, an update whose model
        ``G_v + delta`` has a loss above ``1 + trusted_loss_tolerance`` times the current model's
        is refused (``loss``; :func:`nnc_fl.validation.loss_bound`): a defence that needs no
        history and works in a cohort of two from the first round. One evaluation per update. A
        loss that is not finite, or a callable that raises on an update's model, refuses that
        update; if it fails on the current model, the check stands aside for the round. Honest
        updates can raise a loss on the server's data too (label-skewed nodes, a node whose local
        training went astray): see the README's threat model for what was measured.
    trusted_loss_tolerance : float
        How much worse than the current model an update's model may be on the trusted data, in
        multiples of the current loss.
    auth_keys : mapping or str or Path, optional
        Keys the operator provisioned, ``key_id -> key bytes``, or a keyring file
        (:func:`nnc_fl.auth.read_keyring`). With keys, every update must carry a valid
        HMAC-SHA256 tag under one of them (``auth``), and a key id serves one node only.
    """

    norm_clip_ratio: float | None = 4.0
    norm_reject_ratio: float | None = 25.0
    direction_spread: float | None = 3.5
    agreement_spread: float | None = 3.5
    weight_ratio: float | None = 4.0
    dissent_weight_ratio: float | None = 0.5
    max_update_norm: float | None = None
    outlier_threshold: float | None = None
    outlier_min_count: int = 3
    nonnegative: str | tuple[str, ...] = NONNEGATIVE
    statistics: str | tuple[str, ...] = STATISTICS
    trusted_loss: Callable[[Mapping[str, Any]], float] | None = field(default=None, repr=False)
    trusted_loss_tolerance: float = 3.0
    auth_keys: Mapping[str, bytes] | str | Path | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _positive(self.outlier_threshold, "outlier_threshold", allow_none=True)
        _positive(self.max_update_norm, "max_update_norm", allow_none=True)
        _positive(self.weight_ratio, "weight_ratio", allow_none=True)
        _positive(self.dissent_weight_ratio, "dissent_weight_ratio", allow_none=True)
        for name in ("norm_clip_ratio", "norm_reject_ratio"):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and value > 1):
                raise ValueError(f"{name} must be a finite number > 1 or None, got {value!r}")
        if None not in (self.norm_clip_ratio, self.norm_reject_ratio) and self.norm_reject_ratio < self.norm_clip_ratio:
            raise ValueError("norm_reject_ratio must not be below norm_clip_ratio")
        _positive(self.direction_spread, "direction_spread", allow_none=True)
        _positive(self.agreement_spread, "agreement_spread", allow_none=True)
        if isinstance(self.outlier_min_count, bool) or not isinstance(self.outlier_min_count, int):
            raise TypeError(f"outlier_min_count must be an integer, got {self.outlier_min_count!r}")
        if self.outlier_min_count < 3:
            raise ValueError(f"outlier_min_count must be at least 3, got {self.outlier_min_count}")
        if self.trusted_loss is not None and not callable(self.trusted_loss):
            raise TypeError(f"trusted_loss must be a callable tensors -> loss, got {self.trusted_loss!r}")
        _positive(self.trusted_loss_tolerance, "trusted_loss_tolerance", allow_none=False)
        object.__setattr__(self, "nonnegative", name_patterns(self.nonnegative, "nonnegative"))
        object.__setattr__(self, "statistics", name_patterns(self.statistics, "statistics"))
        keys = self.auth_keys
        if isinstance(keys, (str, Path)):
            keys = read_keyring(keys)
        if keys is not None:
            if not isinstance(keys, Mapping) or not keys:
                raise ValueError("auth_keys must be a non-empty mapping key_id -> key, or a keyring file")
            keys = MappingProxyType(dict(check_key(k, v) for k, v in keys.items()))
        object.__setattr__(self, "auth_keys", keys)


def settings_of(kind: type, value: Any, what: str) -> Any:
    """``value`` if it is a ``kind``; ``kind()`` for ``None``; else a ``TypeError`` naming ``what``."""
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise TypeError(f"{what} must be a {kind.__name__}, got {type(value).__name__}")
    return value


__all__ = [
    "BUDGET_DOWNLINK_PARAMS",
    "BUDGET_PARAMS",
    "DEFAULT_PARAMS",
    "DEFAULT_UPLINK_PARAMS",
    "PARTICIPATION_REL_STEP",
    "Budget",
    "BudgetSchedule",
    "CodecSchedule",
    "CodecSettings",
    "DownlinkSettings",
    "ValidationSettings",
    "budget_params",
    "check_budget",
    "check_target",
    "describe",
    "participation_rel_step",
    "settings_of",
]
