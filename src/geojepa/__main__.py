"""`python -m geojepa`: the same command line as the `geojepa` script."""

import sys

from geojepa.cli import main

sys.exit(main())
