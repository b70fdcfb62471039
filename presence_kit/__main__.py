"""``python -m presence_kit`` runs the ``presence-kit`` command."""

import sys

from ._cli import main

sys.exit(main())
