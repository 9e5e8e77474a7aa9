"""``python -m gateway`` runs the command-line interface."""

import sys

from gateway.cli import main

sys.exit(main())
