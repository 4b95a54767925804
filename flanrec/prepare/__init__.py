"""`python -m flanrec.prepare`: raw logs -> split -> item index -> instruction tasks on disk.

The job is `flanrec.prepare.job.prepare` (its options `flanrec.prepare.options`), the command
line `flanrec.prepare.cli`; the names below are re-exported for `from flanrec.prepare import
PrepareOptions, prepare`.
"""

from flanrec.prepare.job import prepare, summary_table
from flanrec.prepare.options import PrepareOptions

__all__ = ["PrepareOptions", "prepare", "summary_table"]
