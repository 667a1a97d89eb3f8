"""`python -m imagefs` runs the command line."""

from imagefs.cli import main

raise SystemExit(main())
