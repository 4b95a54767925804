"""`python -m flanrec.convert`: the command line (`flanrec.convert.job.main`)."""

import sys

from flanrec.convert.job import main

if __name__ == "__main__":
    sys.exit(main())
