"""``python -m guestload``."""

from guestload.cli import main

raise SystemExit(main())
