"""`python -m flanrec.prepare`: the command line (flanrec.prepare.cli) over the job."""

import sys

from flanrec.prepare.cli import main

sys.exit(main())
