"""The shapes of errors: a setting that is wrong (ConfigError), and bad input the web layer turns into
`{"error": {"code", "message", "field"}}` (FieldError)."""
from __future__ import annotations


class FieldError(ValueError):
    """Bad input: a machine-readable `code`, a sentence for people, and the offending `field` (or None)."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""
