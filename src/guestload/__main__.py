"""``python -m guestload``."""

from guestload.cli.main import main

raise SystemExit(main())
