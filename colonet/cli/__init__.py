"""The `colonet` command: argument parsers and dispatch only."""

from colonet.cli.main import main

__all__ = ["main"]
