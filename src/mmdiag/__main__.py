"""``python -m mmdiag`` runs the command line."""

import sys

from mmdiag.cli.main import main

sys.exit(main())
