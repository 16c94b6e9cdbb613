"""`python -m minibloom ...`: see minibloom/cli.py for the subcommands."""

from minibloom.cli import main

raise SystemExit(main())
