"""`python -m flanrec.quickstart`: the command line (`flanrec.quickstart.job.main`)."""

import sys

from flanrec.quickstart.job import main

if __name__ == "__main__":
    sys.exit(main())
