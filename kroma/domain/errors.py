"""The contract's error taxonomy, defined once. Every failure a client sees is a KromaError."""

from __future__ import annotations


class KromaError(Exception):
    """A failure with the contract's flat shape: {ok:false, error, error_kind, error_code}."""

    status: int = 400
    kind: str = "validation"
    code: str = "validation_error"

    def __init__(
        self, message: str, *, status: int | None = None, kind: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if kind is not None:
            self.kind = kind
        if code is not None:
            self.code = code


class ValidationError(KromaError):
    """400 validation/validation_error: the request is wrong."""


class NotFound(KromaError):
    """404 validation/not_found. The message is fixed per handler (contract §8.2)."""

    status = 404
    code = "not_found"


class Unauthorized(KromaError):
    status = 401
    code = "unauthorized"


class Forbidden(KromaError):
    status = 403
    code = "forbidden"


class Conflict(KromaError):
    """409 infra/concurrency_conflict: the command lost every retry against concurrent changes to
    the same records. Nothing of it was written, so the request can be sent again as it is."""

    status = 409
    kind = "infra"
    code = "concurrency_conflict"

    def __init__(self, message: str = "Concurrent changes conflicted with this request; retry it") -> None:
        super().__init__(message)


class Internal(KromaError):
    """500 infra/internal_error; the message is always sanitised."""

    status = 500
    kind = "infra"
    code = "internal_error"

    def __init__(self, message: str = "Internal server error") -> None:
        super().__init__(message)


class StorageUnavailable(KromaError):
    """503 infra/storage_unavailable: the disk is full or the data folder cannot be written (or is
    locked). Nothing was half-written; the same request can be retried once space returns."""

    status = 503
    kind = "infra"
    code = "storage_unavailable"

    def __init__(
        self, message: str = "Storage is unavailable (disk full or data folder not writable); retry later"
    ) -> None:
        super().__init__(message)


def required(field: str) -> ValidationError:
    return ValidationError(f"Field '{field}' is required")


def at_least_one(*fields: str) -> ValidationError:
    return ValidationError(f"Provide at least one of: {', '.join(fields)}")
