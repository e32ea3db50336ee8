"""What the server learns across rounds to judge a round's updates, because a cohort of two cannot
tell on its own which update is odd.

:class:`NormReference` learns the scale of honest updates from the accepted ones,
:class:`DirectionReference` follows the consensus direction of recently accepted updates, and
:class:`AgreementReference` records how each node's updates agree with the others of their rounds.
The tests on a node's record share :class:`_NodeMeanTest`. Each refusal is an
:class:`nnc_fl.validation.UpdateRejected` with its code (``direction``, ``agreement``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np

from .validation import MAD_SCALE, UpdateRejected


def _unit(x: np.ndarray, norm: float) -> np.ndarray:
    """``x / norm`` flat in float32: every value within [-1, 1] for ``norm`` the vector's norm, so
    products of such arrays cannot overflow."""
    return np.asarray(x).ravel().astype(np.float32, copy=False) * np.float32(1.0 / norm)


def unit_dot(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], norm_a: float, norm_b: float) -> float:
    """``<a / norm_a, b / norm_b>`` over the floating tensors of ``a``, in float32 (to ~1e-5; three
    to seven times faster than in float64 on a 12 M-value model)."""
    total = 0.0
    for name, x in a.items():
        if np.issubdtype(x.dtype, np.floating):
            total += float(np.dot(_unit(x, norm_a), _unit(b[name], norm_b)))
    return total


def cosine(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], norm_a: float, norm_b: float) -> float | None:
    """Cosine of two updates over their floating tensors (``None`` if either is zero)."""
    if not (norm_a > 0 and norm_b > 0):
        return None
    value = unit_dot(a, b, norm_a, norm_b)
    return value if math.isfinite(value) else None


def _level(norms: Sequence[float]) -> float:
    """The scale an honest update of a round has: the median of three or more norms, else the
    smallest (with two updates the larger may be the attacker's; a smaller one cannot hurt)."""
    arr = np.asarray(norms, dtype=np.float64)
    return float(np.median(arr)) if arr.size >= 3 else float(arr.min())


class NormReference:
    """The scale of honest updates, learned from the accepted ones of the last ``window`` rounds.

    :meth:`level` is the larger of the current round's level and the remembered rounds' levels,
    each discounted by ``decay`` per round of age (a round's level is the median of three or more
    norms, or the smallest of fewer). One client can neither raise it (it would need every update
    of a round to be large) nor hold it down for long (a round without it brings the honest level
    back); the discount lets it follow honest updates as they shrink over training, so a scaled
    update late in training still stands out.
    """

    def __init__(self, window: int = 8, decay: float = 0.8) -> None:
        self.decay = decay
        self._levels: deque[float] = deque(maxlen=window)

    def level(self, round_norms: Sequence[float]) -> float | None:
        """The norm an honest update of this round has (``None``: no update to measure)."""
        n = len(self._levels)
        levels = [level * self.decay ** (n - i) for i, level in enumerate(self._levels)]
        positive = [x for x in round_norms if x > 0]
        if positive:
            levels.append(_level(positive))
        return max(levels) if levels else None

    def record(self, accepted_norms: Sequence[float]) -> None:
        """Remember the level of a round's accepted updates (rounds without any are skipped)."""
        positive = [n for n in accepted_norms if n > 0]
        if positive:
            self._levels.append(_level(positive))


class _NodeMeanTest:
    """What :class:`DirectionReference` and :class:`AgreementReference` share: each node has a
    record of per-round values (a cosine), and a node is refused while its mean lies below ``-floor``
    and more than ``spread`` standard deviations below the median of the other nodes' means -- the
    standard deviation an honest node's mean has over as many rounds: the spread *between* the
    other nodes' means (1.4826 x their MAD) and that of single values *within* a node (the median of
    the other nodes' variances) over the node's count, in quadrature. Nobody is refused while the
    other nodes' median is not positive (they do not agree either: the test has no reference), nor
    while a second node also lies below its threshold at half the spread (a minority of honest
    nodes, not one attacker). Subclasses say which records count (:meth:`_records`).
    """

    code = ""
    what = ""

    def __init__(self, spread: float, *, floor: float, min_rounds: int, min_nodes: int) -> None:
        self.spread = spread
        self.floor = floor
        self.min_rounds = min_rounds
        self.min_nodes = min_nodes

    def _records(self, node: int) -> tuple[tuple[float, float, int], list[tuple[float, float, int]]]:
        """``node``'s (sum, sum of squares, count) and those of the other nodes it is compared with."""
        raise NotImplementedError

    def _nodes(self) -> list[int]:
        """Every node with a record."""
        raise NotImplementedError

    def threshold(self, node: int, spread: float | None = None, min_rounds: int | None = None) -> float | None:
        """The mean below which ``node`` is refused, from the other nodes' records (so the node
        cannot widen its own yardstick); ``None`` while fewer than ``min_nodes`` others have
        ``min_rounds`` rounds, ``node`` has fewer than ``min_rounds`` (overridden by the argument),
        or the others' median is not positive. ``spread`` overrides the reference's own (the test
        for a second dissenter uses half the spread and one round)."""
        (_, _, count), records = self._records(node)
        others = [(t, q, c) for t, q, c in records if c >= self.min_rounds]
        if count < (self.min_rounds if min_rounds is None else min_rounds) or len(others) < self.min_nodes:
            return None
        means = np.array([t / c for t, _, c in others])
        within = np.array([max(q - c * (t / c) ** 2, 0.0) / max(c - 1, 1) for t, q, c in others])
        med = float(np.median(means))
        if med <= 0:  # the others do not agree either (oscillating or disagreeing updates): no reference
            return None
        between = MAD_SCALE * float(np.median(np.abs(means - med)))
        sd = math.sqrt(between**2 + float(np.median(within)) / count)
        return min(-self.floor, med - (self.spread if spread is None else spread) * sd)

    def _below(self, node: int, spread: float | None = None, min_rounds: int | None = None) -> float | None:
        """The node's threshold (:meth:`threshold` with these arguments) if its mean lies below
        it, else ``None``."""
        limit = self.threshold(node, spread, min_rounds)
        total, _, count = self._records(node)[0]
        return limit if limit is not None and total / count < limit else None

    def _verdicts(self, nodes: Sequence[int]) -> list[UpdateRejected | None]:
        """The rejection of each of ``nodes`` (``None``: passes), their values already recorded."""
        limits = {node: self._below(node) for node in nodes}
        if any(v is not None for v in limits.values()) and sum(
            self._below(n, self.spread / 2, 1) is not None for n in self._nodes()
        ) > 1:
            limits = {}  # another node also points against the rest: honest disagreement, not one attacker
        out: list[UpdateRejected | None] = []
        for node in nodes:
            limit = limits.get(node)
            if limit is None:
                out.append(None)
                continue
            total, _, count = self._records(node)[0]
            out.append(UpdateRejected(self.code, f"{self.what} (mean cosine {total / count:.3f} over {count} rounds, "
                                                 f"below {limit:.3f} for the federation)"))
        return out


class DirectionReference(_NodeMeanTest):
    """Which nodes keep pulling the model back where it came from: a test on each node's mean
    cosine with the model's recent direction, against what honest nodes' means look like.

    The direction is an exponential average, over rounds, of the mean unit vector of the accepted
    updates (each update counted once: a client with a huge claimed weight does not get to define
    it, which a direction taken from the weighted global increments let a flipper with a capped 4x
    weight do in a cohort of two). For every update, once there is a direction, its cosine with it
    is added to its node's record, and the node is judged by :class:`_NodeMeanTest`'s rule over
    ``min_rounds`` or more rounds: a sign-flipping client averages the negative of what it would
    have sent. While the other nodes' median is not positive -- their updates do not follow the
    direction either, as when a small federation oscillates about its optimum (digits BatchNorm CNN,
    4 nodes in cohorts of 2: every node's mean between -0.25 and -0.13) -- the direction tells
    nothing about anyone and nobody is refused. The floor (0.1) spares a label-skewed node barely
    below zero among tightly agreeing others (UC10 BatchNorm Dirichlet: -0.07 against -0.03..+0.05),
    where a flipper could not be told apart anyway. The server feeds it the trained tensors only
    (without running statistics, which follow each node's data). Holding a node's mean to the
    spread an honest mean has over as many rounds, a node with two rounds of noisy updates is not
    judged as if its mean were exact.
    Measured (traced UC10 / UC14A runs, ``experiments.direction_trace``): UC10 IID nodes' means sat
    at +0.03 to +0.08 with a flipper at -0.11, refused from its second round; label-skewed two-class
    UC14A nodes' means spread from -0.31 to +0.26 with single updates far apart, where a flipper
    looks like an honest node and the test stands aside rather than refuse honest updates (a test
    on the between-node spread alone refused 1-6 honest updates in 6 of 10 such runs). It needs
    ``min_nodes`` other recorded nodes, so one client cannot set the reference alone, and a node
    cannot widen its own yardstick.

    The second-dissenter rule of :class:`_NodeMeanTest` makes it a check for *one* hostile node.
    Label-skewed federations have such minorities -- UC14A two-class Dirichlet, seed 0 with 200 examples held
    back: eight nodes at +0.5, the two holding the other class at -0.5, each of which alone looks
    exactly like a flipper (refused 6-11 times before this rule). A lone dissenter is refused until a
    second one has been seen.
    """

    code = "direction"
    what = "this node's updates point against the federation's recent direction on average"

    def __init__(
        self,
        spread: float,
        *,
        floor: float = 0.1,
        min_rounds: int = 2,
        min_nodes: int = 3,
        decay: float = 0.5,
    ) -> None:
        super().__init__(spread, floor=floor, min_rounds=min_rounds, min_nodes=min_nodes)
        self.decay = decay
        self._direction: dict[str, np.ndarray] = {}
        self._norm = 0.0
        self._record: dict[int, tuple[float, float, int]] = {}  # node -> (sum, sum of squares, count)

    def record(self, deltas: Sequence[Mapping[str, np.ndarray]], norms: Sequence[float]) -> None:
        """Fold the round's accepted updates into the direction: the mean of their unit vectors,
        each update counted once whatever weight the aggregation gives it (so a client that buys
        weight does not buy the yardstick it is measured with)."""
        units = [(d, n) for d, n in zip(deltas, norms, strict=True) if n > 0]
        if not units:
            return
        step: dict[str, np.ndarray] = {}
        for delta, norm in units:
            for name, value in delta.items():
                if np.issubdtype(value.dtype, np.floating):
                    part = _unit(value, norm * len(units))  # a new array: safe to add into
                    if name in step:
                        step[name] += part
                    else:
                        step[name] = part
        decay = np.float32(self.decay)
        for name, value in step.items():
            if name in self._direction:
                self._direction[name] *= decay
                self._direction[name] += value
            else:
                self._direction[name] = value
        self._norm = math.sqrt(sum(float(np.dot(v, v)) for v in self._direction.values()))  # flat arrays

    def reset(self) -> None:
        """Forget the direction (the model was replaced from outside)."""
        self._direction, self._norm = {}, 0.0

    def cosines(self, deltas: Sequence[Mapping[str, np.ndarray]], norms: Sequence[float]) -> list[float | None]:
        """Each update's cosine with the direction (``None`` before the model has moved)."""
        if self._norm <= 0:
            return [None] * len(deltas)
        return [cosine(d, self._direction, n, self._norm) for d, n in zip(deltas, norms, strict=True)]

    def _records(self, node: int) -> tuple[tuple[float, float, int], list[tuple[float, float, int]]]:
        return self._record.get(node, (0.0, 0.0, 0)), [r for n, r in self._record.items() if n != node]

    def _nodes(self) -> list[int]:
        return list(self._record)

    def review(
        self, nodes: Sequence[int], deltas: Sequence[Mapping[str, np.ndarray]], norms: Sequence[float]
    ) -> list[UpdateRejected | None]:
        """Record the round's cosines; the ``direction`` rejection of each update (``None``: passes)."""
        return self.judge(nodes, self.cosines(deltas, norms))

    def judge(self, nodes: Sequence[int], cosines: Sequence[float | None]) -> list[UpdateRejected | None]:
        """:meth:`review` on cosines already measured."""
        for node, c in zip(nodes, cosines, strict=True):
            if c is not None:
                total, squares, count = self._record.get(node, (0.0, 0.0, 0))
                self._record[node] = (total + c, squares + c * c, count + 1)
        return self._verdicts(nodes)


def agreements(deltas: Sequence[Mapping[str, np.ndarray]], norms: Sequence[float]) -> list[float | None]:
    """Each update's cosine with the sum of the *other* updates' unit vectors of the same round
    (over the floating tensors; ``None`` for a zero update or one alone). In a cohort of two, the
    cosine of the pair. One pass over the updates to sum their unit vectors and one dot product of
    each with the sum: ``k`` products for ``k`` updates, not ``k**2``, in float32 (a cosine to
    ~1e-5, ample for a test on its mean over rounds)."""
    live = [i for i, n in enumerate(norms) if n > 0]
    out: list[float | None] = [None] * len(deltas)
    if len(live) < 2:
        return out
    names = [k for k, x in deltas[live[0]].items() if np.issubdtype(x.dtype, np.floating)]
    total = {name: _unit(deltas[live[0]][name], norms[live[0]]) for name in names}
    for i in live[1:]:
        for name in names:
            total[name] += _unit(deltas[i][name], norms[i])
    total_sq = sum(float(np.dot(t, t)) for t in total.values())
    for i in live:
        # <u_i / |u_i|, sum of the units> = 1 + the cosines with the others
        own = sum(float(np.dot(_unit(deltas[i][name], norms[i]), total[name])) for name in names)
        rest_sq = total_sq - 2.0 * own + 1.0  # |sum of the others' units|^2
        value = (own - 1.0) / math.sqrt(rest_sq) if rest_sq > 1e-6 else None
        out[i] = value if value is not None and math.isfinite(value) else None
    return out


class AgreementReference(_NodeMeanTest):
    """Which node keeps pointing against the other updates of its own rounds: a test on each node's
    mean agreement (:func:`agreements`: its cosine with the others of the round; in a cohort of two,
    with its partner), against the agreement of the other nodes *in the rounds the node was not in*,
    so that a flipper does not drag its partners' records down and widen its own yardstick.

    Every round of the last ``window`` leaves each update's agreement in its node's record; the
    decision is :class:`_NodeMeanTest`'s (``spread``, ``floor``, stand aside while the others do not
    agree among themselves or a second node dissents). Unlike the cosine with the recent direction,
    it needs no history of the model's path: updates of one round start from the same model, so
    honest ones agree even where successive rounds oscillate (digits BatchNorm CNN, 4 nodes in
    cohorts of 2: every clean pair +0.00 to +0.60), while a sign flipper's pairs are negative.
    """

    code = "agreement"
    what = "this node's updates point against the other updates of their rounds on average"

    def __init__(
        self,
        spread: float,
        *,
        floor: float = 0.05,
        min_rounds: int = 3,
        min_nodes: int = 2,
        window: int = 40,
        disagreeing: float = 0.05,
        dissent: float = 0.1,
        min_values: int = 8,
    ) -> None:
        super().__init__(spread, floor=floor, min_rounds=min_rounds, min_nodes=min_nodes)
        self.disagreeing = disagreeing
        self.dissent = dissent
        self.min_values = min_values
        self._rounds: deque[dict[int, float]] = deque(maxlen=window)

    def _records(self, node: int) -> tuple[tuple[float, float, int], list[tuple[float, float, int]]]:
        own = [0.0, 0.0, 0]
        others: dict[int, list] = {}
        for values in self._rounds:
            if node in values:
                v = values[node]
                own[0], own[1], own[2] = own[0] + v, own[1] + v * v, own[2] + 1
                continue
            for n, v in values.items():
                r = others.setdefault(n, [0.0, 0.0, 0])
                r[0], r[1], r[2] = r[0] + v, r[1] + v * v, r[2] + 1
        return (own[0], own[1], own[2]), [(t, q, c) for t, q, c in others.values()]

    def _nodes(self) -> list[int]:
        return list({n for values in self._rounds for n in values})

    def threshold(self, node: int, spread: float | None = None, min_rounds: int | None = None) -> float | None:
        """:meth:`_NodeMeanTest.threshold`, and ``None`` while the other nodes have fewer than
        ``min_values`` agreements in the rounds ``node`` was not in, or more than ``disagreeing``
        of them lie below ``-dissent``: honest nodes that disagree among themselves (label skew)
        make a dissenter of each minority, and a few rounds may not show it yet (simulated
        two-class cohorts of two: 8 values halve the runs with a false refusal, 7 % to 4 %).
        Measured on traced runs: honest agreements below -0.1 were 0-1 % of UC10 IID, Dirichlet
        and BatchNorm runs and of the digits BatchNorm federation, 20-50 % of UC14A two-class
        Dirichlet runs; below -0.05, up to 7 % late in UC10 Dirichlet, where the check stood
        aside after refusing a flipper twice."""
        values = [v for r in self._rounds if node not in r for v in r.values()]
        if len(values) < self.min_values or sum(v < -self.dissent for v in values) > self.disagreeing * len(values):
            return None
        return super().threshold(node, spread, min_rounds)

    def dissents(self, node: int) -> bool:
        """Whether ``node``'s recorded agreements average below zero while the median of the
        other nodes' means (over the rounds ``node`` was not in) lies above zero: the node points
        against a federation that otherwise agrees. No minimum count; in a cohort of two the
        partners' agreements are equal, so only the rounds without the node tell which one it is."""
        return self._dissenting_mean(node) is not None

    def _dissenting_mean(self, node: int) -> float | None:
        """``node``'s mean agreement if it :meth:`dissents`, else ``None`` (its records read once)."""
        (total, _, count), others = self._records(node)
        if not count or not others:
            return None
        mean = total / count
        return mean if mean < 0.0 < float(np.median([t / c for t, _, c in others])) else None

    def dissenter(self, nodes: Sequence[int]) -> int | None:
        """The one node of ``nodes`` (a round's) to credit with less weight than the others: of
        those that :meth:`dissents`, the one whose agreements average lowest; ``None`` if none
        does. A weaker sign than a refusal, for a flipper (with or without a bought weight) in
        the rounds before its record stands out far enough to be refused. One node at most: an
        honest partner whose mean a flipper dragged below zero dissents too, but less."""
        means = {n: m for n in nodes if (m := self._dissenting_mean(n)) is not None}
        return min(means, key=means.__getitem__) if means else None

    def reset(self) -> None:
        """Forget the records (the model was replaced from outside)."""
        self._rounds.clear()

    def review(
        self, nodes: Sequence[int], deltas: Sequence[Mapping[str, np.ndarray]], norms: Sequence[float]
    ) -> list[UpdateRejected | None]:
        """Record the round's agreements; the ``agreement`` rejection of each update (``None``: passes)."""
        return self.judge(nodes, agreements(deltas, norms))

    def judge(self, nodes: Sequence[int], values: Sequence[float | None]) -> list[UpdateRejected | None]:
        """:meth:`review` on agreements already measured."""
        self._rounds.append({n: float(v) for n, v in zip(nodes, values, strict=True) if v is not None})
        return self._verdicts(nodes)


__all__ = [
    "AgreementReference",
    "DirectionReference",
    "NormReference",
    "agreements",
    "cosine",
    "unit_dot",
]
