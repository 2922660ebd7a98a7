"""Domain errors raised by services. Edges translate them: the API into a JSON error with the status
below, the admin into a message, the websocket consumer into an ``error`` frame."""

from __future__ import annotations


class DomainError(Exception):
    status = 400
    code = "invalid"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code:
            self.code = code

    def as_dict(self) -> dict[str, object]:
        body: dict[str, object] = {"code": self.code, "message": self.message}
        if self.field:
            body["fields"] = {self.field: [self.message]}
        return body


class InvalidInput(DomainError):
    status = 400
    code = "invalid"


class NotAuthenticated(DomainError):
    status = 401
    code = "not_authenticated"


class Forbidden(DomainError):
    status = 403
    code = "forbidden"


class NotFound(DomainError):
    status = 404
    code = "not_found"


class Conflict(DomainError):
    """The request is valid but the current state forbids it (no capacity left, wrong state)."""

    status = 409
    code = "conflict"


class LengthRequired(DomainError):
    """A streamed body without a declared length (``Content-Length``)."""

    status = 411
    code = "length_required"


class TooLarge(DomainError):
    """A declared size over what the endpoint accepts."""

    status = 413
    code = "too_large"


class RateLimited(DomainError):
    status = 429
    code = "rate_limited"

    def __init__(
        self, message: str, *, retry_after_s: int, field: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, field=field, code=code)
        self.retry_after_s = retry_after_s
