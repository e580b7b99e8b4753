import json
import os
import signal
import socket
import time

import pytest

from colonet.errors import NetdevBusyError, UnknownNetdevError
from colonet.net import owner
from colonet.net.owner import only_in_this_process


def test_a_forked_child_exits_instead_of_running_our_signal_handler(tmp_path):
    """pyroute2 forks helpers and SIGTERMs them; our handler must not run in
    them (it would unwind this process's stack and cleanups in the child)."""
    ran = tmp_path / "ran"

    def handler(signum, frame):
        ran.write_text(str(os.getpid()))
        raise SystemExit(1)

    old = signal.signal(signal.SIGTERM, only_in_this_process(handler))
    try:
        pid = os.fork()
        if pid == 0:
            time.sleep(5)
            os._exit(0)
        time.sleep(0.1)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGTERM
        assert not ran.exists()
    finally:
        signal.signal(signal.SIGTERM, old)


def test_the_owner_still_runs_its_handler():
    seen = []
    old = signal.signal(signal.SIGUSR1, only_in_this_process(lambda s, f: seen.append(s)))
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)
        assert seen == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, old)


# -- netdev ownership: one lock file per netdev, held while a filter steers --


@pytest.fixture
def run_dir(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv(owner.RUN_DIR_ENV, str(tmp_path / "run"))
    return tmp_path / "run"


def _in_child(action) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Run `action` in a forked child that then waits; (pid, pipe to end it)."""
    ready_r, ready_w = os.pipe()
    end_r, end_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(end_w)  # else our own copy keeps the pipe from ever ending
        try:
            action()
            os.write(ready_w, b"y")
        except BaseException:
            os.write(ready_w, b"n")
        os.read(end_r, 1)
        os._exit(0)
    assert os.read(ready_r, 1) == b"y"
    for fd in (ready_r, ready_w, end_r):
        os.close(fd)
    return pid, end_w


def _end_child(pid: int, end_w: int) -> None:
    os.close(end_w)
    os.waitpid(pid, 0)


def test_a_claim_is_a_lock_file_named_by_namespace_and_ifindex(run_dir) -> None:
    claim = owner.claim_netdev("lo")
    name = owner.netdev_lock_name(socket.if_nametoindex("lo"))
    assert name == f"net{owner.this_netns()}-if1.lock"
    assert claim.path == str(run_dir / name)
    assert json.loads((run_dir / name).read_text()) == {
        "pid": os.getpid(),
        "netdev": "lo",
        "ifindex": 1,
    }
    assert owner.lock_held(name) is True
    claim.release()
    assert not (run_dir / name).exists()
    assert owner.lock_held(name) is None
    claim.release()  # twice is harmless


def test_a_held_netdev_is_refused_naming_it_and_its_owner(run_dir, monkeypatch) -> None:
    monkeypatch.setattr(owner, "CLAIM_RETRY_S", 0.05)
    pid, end = _in_child(lambda: owner.claim_netdev("lo"))
    try:
        with pytest.raises(NetdevBusyError, match=rf"netdev lo is already buffered .*\(pid {pid},"):
            owner.claim_netdev("lo")
        assert NetdevBusyError.exit_code == 2
        name = owner.netdev_lock_name(1)
        assert owner.lock_held(name) is True
        assert owner.holder_alive(name, None) is True
        assert owner.remove_stale_locks() == []  # held: never removed
    finally:
        _end_child(pid, end)
    # The owner is gone: its lock with it, whatever pid the tag names.
    assert owner.lock_held(owner.netdev_lock_name(1)) is False
    assert owner.holder_alive(owner.netdev_lock_name(1), os.getppid()) is False
    owner.claim_netdev("lo").release()


def test_a_dead_owners_lock_file_is_stale_and_swept(run_dir) -> None:
    pid, end = _in_child(lambda: owner.claim_netdev("lo"))
    _end_child(pid, end)  # exits without releasing: as if killed
    name = owner.netdev_lock_name(1)
    assert (run_dir / name).exists() and owner.lock_held(name) is False
    other = run_dir / "net1-if7.lock"
    other.write_text("{}")
    assert owner.remove_stale_locks(netns=owner.this_netns()) == [
        f"stale lock file {run_dir / name} (netdev lo, pid {pid}, no longer running)"
    ]
    assert other.exists()  # another namespace's: left to a full sweep
    assert len(owner.remove_stale_locks()) == 1 and not other.exists()


def test_a_stale_lock_file_does_not_stop_a_new_claim(run_dir) -> None:
    pid, end = _in_child(lambda: owner.claim_netdev("lo"))
    _end_child(pid, end)
    claim = owner.claim_netdev("lo")
    with open(claim.path) as f:
        assert json.loads(f.read())["pid"] == os.getpid()
    claim.release()


def test_without_a_lock_file_the_pid_decides(run_dir) -> None:
    """Tags written before locks (or a lock file removed by hand)."""
    assert owner.holder_alive(None, None) is False
    assert owner.holder_alive("net1-if9.lock", os.getppid()) is True
    assert owner.holder_alive("", 2**22 + 12345) is False
    assert owner.holder_alive("../../etc/passwd", os.getppid()) is True  # not a lock name


def test_claims_are_all_or_none(run_dir) -> None:
    with pytest.raises(UnknownNetdevError, match="'nosuch0'"):
        owner.claim_netdevs(["lo", "nosuch0"])
    assert list(run_dir.iterdir()) == []  # lo was let go again
    claims = owner.claim_netdevs(["lo"])
    claims.release()
    assert list(run_dir.iterdir()) == []


def test_a_lock_a_newer_filter_holds_does_not_revive_a_dead_owners_tag(run_dir) -> None:
    """A crashed filter's tags name the lock file a new filter on the same
    netdev now holds: the pid written in it tells the two apart."""
    claim = owner.claim_netdev("lo")
    name = owner.netdev_lock_name(1)
    try:
        assert owner.holder_alive(name, os.getpid()) is True
        assert owner.holder_alive(name, os.getpid() + 1) is False
        assert owner.holder_alive(name, None) is True
    finally:
        claim.release()
