import pytest

from colonet.checkpoint.failover import (
    Failover,
    FailoverError,
    FailoverEvent,
    FailoverState,
    reason_of_peer_loss,
)


def test_states_run_none_required_active_completed():
    f = Failover("secondary")
    assert f.state is FailoverState.NONE
    assert f.require("heartbeat", "no frame for 1000 ms", now=10.0)
    assert f.state is FailoverState.REQUIRED
    assert f.start(applying=False)
    assert f.state is FailoverState.ACTIVE
    event = f.complete(last_committed=7, now=10.25)
    assert f.state is FailoverState.COMPLETED
    assert event == FailoverEvent(
        "secondary", "heartbeat", "no frame for 1000 ms", 7, "completed", pytest.approx(250.0)
    )
    assert event.to_json()["failover_ms"] == 250.0


def test_first_trigger_wins_and_later_ones_are_kept_for_the_log():
    f = Failover("primary")
    assert f.require("error", "connection reset", now=1.0)
    assert not f.require("request", "operator", now=2.0)
    assert f.reason == "error" and f.ignored == [("request", "operator")]


def test_failover_waits_while_a_checkpoint_is_applied():
    f = Failover("secondary")
    f.require("request", "operator", now=0.0)
    assert not f.start(applying=True)
    assert f.state is FailoverState.REQUIRED
    assert f.start(applying=False)


@pytest.mark.parametrize("step", ["start", "complete"])
def test_steps_out_of_order_are_refused_naming_the_state(step):
    f = Failover("secondary")
    with pytest.raises(FailoverError, match="from state none"):
        if step == "start":
            f.start(applying=False)
        else:
            f.complete(1, now=0.0)


def test_bad_mode_and_reason_are_refused():
    with pytest.raises(ValueError, match="mode 'sideways'"):
        Failover("sideways")
    with pytest.raises(ValueError, match="reason 'boredom'"):
        Failover("primary").require("boredom", "", now=0.0)
    with pytest.raises(ValueError, match="reason 'closed'"):
        FailoverEvent("primary", "closed", "", 1)


def test_peer_loss_reasons_map_onto_failover_reasons():
    assert reason_of_peer_loss("heartbeat") == "heartbeat"
    assert reason_of_peer_loss("closed") == "error"
    assert reason_of_peer_loss("error") == "error"
    assert reason_of_peer_loss("request") == "request"
