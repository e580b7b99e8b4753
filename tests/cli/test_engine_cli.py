"""`colonet secondary` / `colonet primary` refuse bad settings at start, in
process, before anything listens or connects. No root needed."""

from __future__ import annotations

import socket

from colonet.cli.main import main


def test_a_secondary_with_a_missing_guest_nic_refuses_to_start(capsys) -> None:
    # Issue 15 item 3: found at start, not at takeover (when the stand-down
    # would already have gone out and the guest would run nowhere).
    assert main(["secondary", "--listen", "127.0.0.1:7", "--guest-nic", "rtNOPE0"]) == 2
    err = capsys.readouterr()
    assert "unknown netdev 'rtNOPE0'" in err.err
    assert "listening" not in err.out


def test_a_secondary_with_a_missing_guest_namespace_refuses_to_start(capsys) -> None:
    argv = ["secondary", "--listen", "127.0.0.1:7", "--guest-netns", "cnNOPE", "--json"]
    assert main([*argv, "--guest-nic", "eth0"]) == 2
    assert "network namespace 'cnNOPE' does not exist" in capsys.readouterr().err
    assert main(argv) == 2
    assert "'cnNOPE': no such network namespace" in capsys.readouterr().err


def test_a_secondary_that_only_keeps_checkpoints_needs_no_guest_nic(capsys) -> None:
    # --no-takeover never starts the guest here: its NIC is not needed. (The
    # bad listen address stops it right after the check.)
    argv = ["secondary", "--listen", "256.0.0.1:7", "--guest-nic", "rtNOPE0", "--no-takeover"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "rtNOPE0" not in err
    assert "cannot listen on 256.0.0.1:7" in err


def test_a_listen_port_in_use_is_named(capsys) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["secondary", "--listen", f"127.0.0.1:{port}"]) == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in capsys.readouterr().err


def test_a_qemu_secondary_without_its_files_refuses_to_start(tmp_path, capsys) -> None:
    kernel = str(tmp_path / "vmlinuz")
    argv = ["secondary", "--listen", "127.0.0.1:7", "--guest", "qemu", "--qemu-kernel", kernel]
    assert main(argv) == 2
    assert "--guest qemu needs --qemu-initrd, --qemu-tap" in capsys.readouterr().err
    argv += ["--qemu-initrd", kernel, "--qemu-tap", "tap9"]
    assert main(argv) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_engine_numbers_are_refused_with_the_option_named(capsys) -> None:
    base = ["primary", "--peer", "127.0.0.1:1"]
    for extra, fault in (
        (["--heartbeat-timeout-ms", "0"], "--heartbeat-timeout-ms 0 must be between"),
        (["--heartbeat-timeout-ms", "40000"], "--heartbeat-timeout-ms 40000 must be between"),
        (["--checkpoint-delay-ms", "-1"], "--checkpoint-delay-ms -1 must be positive"),
        (["--ram-mib", "0"], "--ram-mib 0 must be positive"),
    ):
        assert main([*base, *extra]) == 2, extra
        assert fault in capsys.readouterr().err
