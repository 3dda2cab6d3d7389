"""The project's own error type: a one-line message that says what was wrong and what to do."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SkinError(Exception):
    """A user-facing error. The CLI prints its message on one line, without a traceback."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = self.message.rstrip(".")
        if self.hint:
            # "Did you mean: x?" already ends the sentence; a "." after it would read "?.".
            text = f"{text} {self.hint}" if text.endswith(("?", "!")) else f"{text}. {self.hint}"
        # One line, always: a newline inside a path or a library message would break it.
        return " ".join(text.split())


class ImageError(SkinError):
    """An image that cannot be used, with the reason (corrupt, too large, not an image)."""

    def __init__(self, message: str, *, code: str = "invalid_image", hint: str | None = None):
        self.code = code
        super().__init__(message, hint=hint)


def did_you_mean(value: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ' Did you mean: a, b?' for the closest choices, or an empty string."""
    close = difflib.get_close_matches(value, list(choices), n=n, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""
