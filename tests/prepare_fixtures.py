"""One real `flanrec.prepare` run on MovieLens-100K per test session, shared by the
test_prepare_* and test_tasks_* modules (tests/conftest.py makes it visible to all). The
output sits at a fixed path under the session's base temp dir.

It trains a small SentencePiece vocabulary (--train_vocab), because the Flan-T5 one is not
available offline; every task then tokenizes with it.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def prepared_ml100k(ml100k_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flanrec.prepare import PrepareOptions, prepare

    # One fixed path per session: each module that imports this fixture gets its own
    # fixture instance, but all of them find the first run's output there and reuse it.
    out = tmp_path_factory.getbasetemp() / "prepared-ml-100k"
    if (out / "prepare.json").exists():
        return out
    prepare(PrepareOptions(dataset="ml-100k", out=str(out), raw_dir=str(ml100k_dir),
                           train_vocab=True, vocab_size=2000, allow_download=False),
            log=lambda msg: None)
    return out
