"""Typed errors: each one tells the caller what to do next.

- ConfigError: the operator must fix the configuration; nothing is done.
- PermanentError: this item can never succeed as asked; record it and do not retry.
- TransientError: try again later, after `retry_after` seconds when the service said so.
"""
from __future__ import annotations


class SyncError(Exception):
    """Base of every error the app raises on purpose."""


class ConfigError(SyncError):
    """The configuration or the settings are wrong; `problems` lists every one of them."""

    def __init__(self, problems: list[str] | str, *, source: str = "configuration"):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} has {len(self.problems)} problem(s):\n{lines}")


class PermanentError(SyncError):
    """This item can never succeed as asked (bad principal, distribution group, policy...)."""


class PrincipalError(PermanentError, ValueError):
    """A principal reference or identifier is malformed."""


class DistributionGroupError(PermanentError):
    """A group that Kusto cannot accept: it is not security-enabled."""


class UnknownDomainError(PermanentError):
    """A domain that belongs to no Entra tenant."""


class NotFoundError(PermanentError):
    """The directory or ARM object does not exist."""


class PermissionDeniedError(PermanentError):
    """The app's identity lacks a permission: `permission` names the Graph app role or ARM action
    to grant (docs/permissions.md), when it is known."""

    def __init__(self, message: str, *, permission: str | None = None):
        self.permission = permission
        super().__init__(message)


class TransientError(SyncError):
    """A temporary failure (throttling, 5xx, conflicts): retry, after `retry_after` if given."""

    def __init__(self, message: str, *, retry_after: float | None = None):
        self.retry_after = retry_after
        super().__init__(message)
