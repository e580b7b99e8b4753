"""The layering rules of docs/DESIGN.md ("Layers"), checked on the source.

- The pure packages and modules import nothing that does I/O on the network
  or runs processes: they are imported here with socket, ssl, subprocess,
  select/selectors, pyroute2 and netfilterqueue blocked.
- Only `colonet.cli` parses arguments (no argparse elsewhere).
- No folder cycle: guests never import the checkpoint layer, the buffer
  imports no other colonet layer but guest-free basics.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import colonet
import colonet.buffer

ROOT = Path(colonet.__file__).parent
BLOCKED = ("socket", "ssl", "subprocess", "select", "selectors", "pyroute2", "netfilterqueue")
PURE_MODULES = (
    *(f"colonet.buffer.{m.name}" for m in pkgutil.iter_modules(colonet.buffer.__path__)),
    "colonet.checkpoint.frames",
    "colonet.checkpoint.messages",
    "colonet.checkpoint.connection",
    "colonet.checkpoint.protocol",
    "colonet.checkpoint.pages",
    "colonet.checkpoint.ram_cache",
    "colonet.checkpoint.failover",
    "colonet.checkpoint.auth",
    "colonet.control.protocol",
    "colonet.guest.base",
    "colonet.guest.qemu_cmdline",
    "colonet.guest.dirty_scan",
    "colonet.demo.consistency",
)

_BLOCKER = f"""
import sys
BLOCKED = {BLOCKED!r}
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"pure code imported {{name}}")
        return None
for name in list(sys.modules):
    if name.split(".")[0] in BLOCKED:
        del sys.modules[name]
sys.meta_path.insert(0, Blocker())
import importlib
for module in sys.argv[1:]:
    importlib.import_module(module)
print("ok")
"""


def test_the_pure_modules_import_no_io_module() -> None:
    done = subprocess.run(
        [sys.executable, "-I", "-c", _BLOCKER, *PURE_MODULES],
        capture_output=True,
        text=True,
        cwd=ROOT.parent,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_blocker_does_catch_an_io_import() -> None:
    done = subprocess.run(
        [sys.executable, "-I", "-c", _BLOCKER, "colonet.checkpoint.transport"],
        capture_output=True,
        text=True,
        cwd=ROOT.parent,
    )
    assert done.returncode != 0
    assert "pure code imported socket" in done.stderr


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py")) if folder else sorted(ROOT.rglob("*.py"))


def test_only_the_cli_parses_arguments() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in _modules("")
        if "argparse" in _imports(p) and p.relative_to(ROOT).parts[0] != "cli"
    ]
    assert offenders == []


def test_guests_never_import_the_checkpoint_layer() -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(
            i for i in _imports(p) if i.startswith(("colonet.checkpoint", "colonet.node"))
        )
        for p in _modules("guest")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_buffer_imports_no_backend_engine_or_node() -> None:
    allowed = ("colonet.buffer", "colonet.errors")
    offenders = {
        str(p.relative_to(ROOT)): sorted(
            i for i in _imports(p) if i.startswith("colonet") and not i.startswith(allowed)
        )
        for p in _modules("buffer")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
