"""`colonet primary` refuses a guest of no RAM before it makes anything
(issue 15 item 10c: it once tracebacked and leaked its work dir)."""

from __future__ import annotations

import tempfile

import pytest

from colonet.cli.main import main


@pytest.mark.parametrize("ram_mib", ["0", "-1"])
def test_primary_refuses_ram_mib_below_1_cleanly(tmp_path, monkeypatch, capsys, ram_mib):
    # A private temp dir: others' runs may make colonet-primary-* in /tmp meanwhile.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code = main(["primary", "--ram-mib", ram_mib, "--peer", "127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"colonet: error: --ram-mib {ram_mib} must be positive" in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no colonet-primary-* work dir left
