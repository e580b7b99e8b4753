from colonet.demo.consistency import Reply, check


def replies(*pairs: tuple[float, int]) -> list[Reply]:
    return [Reply(at, i + 1, value) for i, (at, value) in enumerate(pairs)]


def test_a_clean_failover_passes_and_measures_the_gap():
    run = replies((1.0, 1), (1.1, 2), (1.2, 3), (2.0, 4), (2.1, 5))
    verdict = check(run, killed_at=1.5, takeover_counter=3)
    assert verdict.passed, verdict.violations
    assert round(verdict.failover_gap_ms) == 800


def test_a_rollback_is_found_and_named():
    run = replies((1.0, 1), (1.1, 2), (1.2, 3), (2.0, 2))
    verdict = check(run, killed_at=1.5, takeover_counter=1)
    assert not verdict.passed
    assert any(
        "rollback: request 4 got 2 after request 3 had already got 3" in v
        for v in verdict.violations
    )
    assert any("saw counter 3" in v and "resumed at 1" in v for v in verdict.violations)


def test_a_value_handed_out_twice_is_a_rollback():
    verdict = check(replies((1.0, 1), (2.0, 1)), killed_at=1.5, takeover_counter=1)
    assert any(v.startswith("rollback") for v in verdict.violations)


def test_no_takeover_or_no_reply_after_it_fails():
    assert "never took the guest over" in check(replies((1.0, 1)), 1.5, None).violations[0]
    verdict = check(replies((1.0, 1)), 1.5, 1)
    assert verdict.violations == ("no reply from the secondary after the takeover",)


def test_nothing_before_the_kill_checks_nothing():
    verdict = check(replies((2.0, 1)), killed_at=1.5, takeover_counter=0)
    assert "nothing was checked" in verdict.violations[0]


def test_a_vm_takeover_without_a_readable_counter_is_judged_by_the_replies():
    clean = replies((1.0, 1), (1.1, 2), (2.0, 3))
    assert check(clean, 1.5, None, took_over=True).passed
    rolled_back = replies((1.0, 1), (1.1, 2), (2.0, 2))
    verdict = check(rolled_back, 1.5, None, took_over=True)
    assert [v.split(":")[0] for v in verdict.violations] == ["rollback"]
