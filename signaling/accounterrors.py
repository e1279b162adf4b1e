"""The one error of account operations (its own module so that ``accounts`` and the modules it
uses, such as ``emaillinks``, can all raise it without importing each other)."""

from __future__ import annotations

from typing import Any


class AccountError(Exception):
    """A refused account operation; ``code`` is the API error code."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}  # extra fields of the API error object
