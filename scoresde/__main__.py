"""`python -m scoresde` is the `scoresde` command."""

import sys

from .cli import main

sys.exit(main())
