"""``python -m guestload_lab demo``."""

import sys

from guestload_lab.demo import main

sys.exit(main())
