"""strategies.server_model: the downlink decision, in one place."""

from __future__ import annotations

import pytest

from nnc_fl import protocol as p
from strategies.server_model import choose_downlink


@pytest.mark.parametrize(
    ("held", "increments_from", "kind"),
    [
        (5, 5, p.SAME),
        (4, 5, p.DELTA),
        (4, None, p.KEYFRAME),
        (3, 5, p.KEYFRAME),  # needs G_4 - G_3, which the server no longer has
        (3, 4, p.DELTA),  # chain of two increments
        (0, 1, p.DELTA),
        (None, 1, p.KEYFRAME),
        (6, 1, p.KEYFRAME),  # a node claiming a future version
    ],
)
def test_version_rule(held, increments_from, kind):
    assert choose_downlink(held, 5, increments_from) == kind


def test_chain_longer_than_the_limit_gets_a_keyframe():
    v = p.MAX_CHAIN + 10
    assert choose_downlink(v - p.MAX_CHAIN, v, 1) == p.DELTA
    assert choose_downlink(v - p.MAX_CHAIN - 1, v, 1) == p.KEYFRAME
