"""Fixtures every test module sees without importing them.

The MovieLens-100K fixtures (tests/data_fixtures.py) and the one real `flanrec.prepare` run
on it (tests/prepare_fixtures.py) are session fixtures: defined here once, each runs once
per session for all the modules that name it as an argument (imported into each module, as
before, every module got its own instance, and the imports needed `# noqa` twice over).
"""

from data_fixtures import ml100k_dataset, ml100k_dir, ml100k_split
from prepare_fixtures import prepared_ml100k

__all__ = ["ml100k_dataset", "ml100k_dir", "ml100k_split", "prepared_ml100k"]
