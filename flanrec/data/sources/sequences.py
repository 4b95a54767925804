"""One line per user, items in time order: the format of the generative-recommendation papers.

P5, TIGER, S3-Rec and ICLRec publish their Amazon 5-core splits as ``user item_1 ... item_n``
(space separated, oldest item first, no timestamps or ratings). The leave-one-out protocol
needs only each user's order, so the reader gives every interaction its position in the
user's line as timestamp: the chronological split then takes the last item as test and the
one before as validation, exactly as those papers do.

Ids are kept as strings; nothing reads meaning into their numbers (the files number items by
first appearance, so an id leaks the order users were written in). A user that appears on two
lines is refused: the file would no longer say which of the two orders is the user's.
"""

from __future__ import annotations

import os
from pathlib import Path

from flanrec.data import types
from flanrec.data.errors import DataError
from flanrec.data.sources import _common


def read_sequences(
    path: str | os.PathLike[str],
    *,
    delimiter: str | None = None,
    encoding: str = "utf-8",
    name: str | None = None,
) -> types.Dataset:
    """Read ``user item_1 ... item_n`` lines (``delimiter=None``: any run of whitespace).

    A line needs a user and at least one item. A directory is accepted when it holds exactly
    one ``.txt`` file, so ``--raw_dir`` may name the folder a paper's data came in.
    """
    p = Path(path)
    if p.is_dir():
        found = sorted(q for q in p.iterdir() if q.suffix == ".txt" and q.is_file())
        if len(found) != 1:
            raise DataError(p, "a sequence file (user item_1 ... item_n per line), or a "
                            "folder holding exactly one .txt file",
                            got=f"{len(found)} .txt files", has_got=True)
        p = found[0]
    users: list[str] = []
    items: list[str] = []
    stamps: list[int] = []
    first_line: dict[str, int] = {}
    for line, text in _common.iter_lines(p, encoding):
        fields = text.split(delimiter)
        if len(fields) < 2:
            raise DataError(p, "a user id followed by at least one item id", line=line,
                            got=text, has_got=True)
        user = fields[0]
        if user in first_line:
            raise DataError(p, "each user on one line", line=line, field="user",
                            got=f"{user!r}, already on line {first_line[user]}", has_got=True)
        first_line[user] = line
        users.extend([user] * (len(fields) - 1))
        items.extend(fields[1:])
        stamps.extend(range(len(fields) - 1))
    inter = _common.make_interactions(users, items, stamps, None, p)
    return _common.finish_dataset(name or p.stem, inter)
