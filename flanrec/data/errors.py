"""The one exception data readers raise, so a bad file is reported where the user can fix it.

A parser that fails deep inside numpy or ``int()`` says ``invalid literal for int()`` and
nothing else; with a dataset of 25M lines that is useless. Every reader in
``flanrec.data.sources`` and ``flanrec.data.fetch`` therefore raises :class:`DataError` with
the file, the 1-based line (or row), the field and what was expected instead. It subclasses
``ValueError`` so callers that already catch bad values keep working.
"""

from __future__ import annotations

import os

from flanrec.errors import UserError


def _shorten(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class DataError(UserError, ValueError):
    """Bad input data, located precisely.

    str() reads like ``u.data line 17, field 'timestamp': expected an integer, got 'abc'``.
    Any of ``line``, ``field`` and ``got`` may be absent (an empty file has no line; a missing
    file has no field). ``unit`` is "line" for text files and "row" for columnar ones (Parquet).
    """

    def __init__(
        self,
        file: str | os.PathLike[str] | None,
        expected: str,
        *,
        line: int | None = None,
        field: str | None = None,
        got: object = None,
        has_got: bool | None = None,
        unit: str = "line",
        hint: str = "",
    ) -> None:
        self.file = os.fspath(file) if file is not None else None
        self.line = line
        self.field = field
        self.expected = expected
        self.got = got
        self.has_got = (got is not None) if has_got is None else has_got
        self.unit = unit
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        where = self.file if self.file is not None else "<data>"
        if self.line is not None:
            where += f" {self.unit} {self.line}"
        if self.field is not None:
            where += f", field {self.field!r}"
        text = f"{where}: expected {self.expected}"
        if self.has_got:
            text += f", got {_shorten(self.got)}"
        if self.hint:
            text += f" ({self.hint})"
        return text

    def __str__(self) -> str:
        return self._render()

    def __reduce__(self):  # keep the exception picklable (multiprocessing, pytest-xdist)
        return (
            _rebuild,
            (self.file, self.expected, self.line, self.field, self.got, self.has_got,
             self.unit, self.hint),
        )


def _rebuild(file, expected, line, field, got, has_got, unit, hint) -> DataError:
    return DataError(file, expected, line=line, field=field, got=got, has_got=has_got,
                     unit=unit, hint=hint)
