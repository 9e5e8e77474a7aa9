"""``python -m cloud_tecc``: the cluster command line."""

import sys

from cloud_tecc.cli import main

sys.exit(main())
