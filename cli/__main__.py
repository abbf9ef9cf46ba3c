"""`python -m quicksam.cli ...`: the `quicksam` command."""

import sys

from . import main

sys.exit(main())
