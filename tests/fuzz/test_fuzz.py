"""Fuzz the parsers and state machines a peer can reach (few examples here;
`tools/fuzz.py` runs 100,000 of each). Set COLONET_FUZZ_EXAMPLES to change."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import targets

EXAMPLES = int(os.environ.get("COLONET_FUZZ_EXAMPLES", "300"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fuzz
@given(targets.chunks)
def test_frame_decoder(pieces):
    targets.frame_decoder(pieces)


@fuzz
@given(
    st.sampled_from(["primary", "secondary"]),
    st.lists(targets.wire_items, max_size=30),
    st.integers(1, 50),
)
def test_state_machines(side, items, cut_at):
    targets.state_machine(side, items, cut_at)


@fuzz
@given(st.binary(max_size=200), st.one_of(st.none(), st.integers(0, 10_000)))
def test_checkpoint_body(data, flip):
    targets.checkpoint_body(data, flip)


@fuzz
@given(targets.chunks)
def test_record_layer(pieces):
    targets.record_layer(pieces)
