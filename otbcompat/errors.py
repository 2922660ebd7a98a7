"""Errors in the shape the OTB box acts on: ``{"class": "Client::…", "message": …}`` (OVH API style).

The box renews its JWT on a 401 and re-subscribes on a 403, but only when ``class`` is
``Client::Unauthorized``; other classes leave it polling.
"""

from __future__ import annotations


class OtbError(Exception):
    status = 400
    error_class = "Client::BadRequest"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, str]:
        return {"class": self.error_class, "message": self.message}


class OtbBadRequest(OtbError):
    status = 400
    error_class = "Client::BadRequest"


class OtbUnauthorized(OtbError):
    """401 + Client::Unauthorized: the box renews its JWT (expired, revoked generation)."""

    status = 401
    error_class = "Client::Unauthorized"


class OtbForbiddenResubscribe(OtbError):
    """403 + Client::Unauthorized: the device is unknown or revoked; the box subscribes again."""

    status = 403
    error_class = "Client::Unauthorized"


class OtbForbidden(OtbError):
    """403 + Client::Forbidden: a box asking about another box (it must not re-subscribe for that)."""

    status = 403
    error_class = "Client::Forbidden"


class OtbTooManyRequests(OtbError):
    status = 429
    error_class = "Client::TooManyRequests"


class OtbNotFound(OtbError):
    status = 404
    error_class = "Client::NotFound"
