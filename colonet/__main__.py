"""Allow `python -m colonet`."""

from colonet.cli import main

raise SystemExit(main())
