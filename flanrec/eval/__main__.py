"""`python -m flanrec.eval`: the command line (`flanrec.eval.job.main`)."""

import sys

from flanrec.eval.job import main

if __name__ == "__main__":
    sys.exit(main())
