import os
import signal
import time

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
