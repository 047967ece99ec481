"""The one error type users see: a clear line naming file, line and field."""

from __future__ import annotations

from ttx.redact import redact_text


class TtxError(Exception):
    """A user-facing error; the CLI prints it as one line and exits with code 2."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.path, self.line, self.field = path, line, field
        where = ""
        if path is not None:
            where = str(path) + (f":{line}" if line is not None else "")
            where += f": field '{field}'" if field is not None else ""
            where += ": "
        elif field is not None:
            where = f"field '{field}': "
        # a secret in a URL (a --base-url's key) is never shown (ttx.redact)
        super().__init__(redact_text(where + message))
