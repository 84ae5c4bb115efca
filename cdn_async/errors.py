"""Every error cdn_async raises.

::

    CDNError
    ├── ValidationError (also ValueError)       bad input, raised before anything is sent
    ├── APIConnectionError                      the request did not get an answer
    │   └── APITimeoutError                     ... because the timeout ran out
    ├── APIResponseError                        a 2xx whose body is not what the API sends
    ├── RateLimitedError                        a budget is paused longer than max_rate_limit_wait
    │   └── BudgetWaitTimeout                   ... or admission is further off than max_budget_wait
    ├── QueueFullError                          max_queued calls are already waiting
    ├── BudgetFileError                         a SQLiteBudgetStore's file is unusable
    ├── CreateUnconfirmedError                  a create failed ambiguously and the lookup too
    ├── APIError                                the API answered with an error status
    │   ├── BadRequestError          400
    │   ├── AuthenticationError      401
    │   ├── PermissionDeniedError    403
    │   ├── NotFoundError            404
    │   ├── ConflictError            409
    │   ├── UnprocessableEntityError 422
    │   ├── TooManyRequestsError     429 (also a RateLimitedError)
    │   └── InternalServerError      5xx
    └── PurgeError                              some paths of a purge failed; carries the report

No message, attribute or repr of these errors contains the API token.
"""

from __future__ import annotations

from typing import Any

from ._error_root import CDNError
from ._models import PurgeReport, RateLimitInfo
from ._public import publish as _publish

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BudgetFileError",
    "BudgetWaitTimeout",
    "CDNError",
    "ConflictError",
    "CreateUnconfirmedError",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "PurgeError",
    "QueueFullError",
    "RateLimitInfo",
    "RateLimitedError",
    "TooManyRequestsError",
    "UnprocessableEntityError",
    "ValidationError",
]


class ValidationError(CDNError, ValueError):
    """An argument is invalid; raised before any request is sent."""


class APIConnectionError(CDNError):
    """No answer arrived: connection refused, reset or dropped.

    Args:
        message: What happened.
        method: The HTTP method.
        path: The URL path (never the full URL with credentials; there are none in it).
        attempts: How many attempts were made.
    """

    def __init__(
        self, message: str, *, method: str = "", path: str = "", attempts: int = 1
    ) -> None:
        super().__init__(message)
        self.message = message
        self.method = method
        self.path = path
        self.attempts = attempts


class APITimeoutError(APIConnectionError):
    """The request timed out before an answer arrived."""


class APIResponseError(CDNError):
    """The API answered 2xx with a body that is not the JSON it documents."""

    def __init__(self, message: str, *, status: int, body_excerpt: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body_excerpt = body_excerpt


class RateLimitedError(CDNError):
    """A budget is paused by the server for longer than the client may wait.

    Args:
        message: What happened.
        reset_at: Epoch seconds when the budget frees again, when known.
        budget: The name of the budget, when known.
    """

    def __init__(
        self, message: str, *, reset_at: float | None = None, budget: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reset_at = reset_at
        self.budget = budget

    @classmethod
    def paused(cls, budget: str, key: str, paused_for: float, now: float) -> RateLimitedError:
        """A budget store's refusal: the key is paused (after a 429) longer than the call
        may wait. ``now``: the wall clock, epoch seconds."""
        return cls(
            f"budget {budget!r} ({key}) is paused for {paused_for:.3f} s after a 429",
            reset_at=now + paused_for,
            budget=budget,
        )


class BudgetWaitTimeout(RateLimitedError):
    """The call could not be admitted by its budgets within ``max_budget_wait``; nothing was
    sent and nothing taken.

    Raised at once when the budget store can already tell (the queue ahead and the units it
    counts bound the earliest admission), else when the deadline passes.

    Args:
        message: What happened.
        retry_after: Seconds from now until the call would have been admitted, when the store
            can tell (a lower bound: the queue may move faster if callers ahead give up).
        budget: The budget that holds it back, when known.
    """

    def __init__(
        self, message: str, *, retry_after: float | None = None, budget: str | None = None
    ) -> None:
        super().__init__(message, budget=budget)
        self.retry_after = retry_after


class QueueFullError(CDNError):
    """``max_queued`` calls of this client are already waiting for their budgets; this one
    was refused at once, nothing sent (shed load instead of piling up tasks)."""


class BudgetFileError(CDNError):
    """A ``SQLiteBudgetStore`` cannot use its file: it cannot be opened or written (a missing
    or read-only directory), it is not a budget file (corrupt, or another program's), or
    another program kept it locked for longer than ``lock_timeout``. Nothing was admitted:
    the budgets shared through the file could not be checked.

    Args:
        message: What happened, the file's path and what to do.
        path: The file.
    """

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class APIError(CDNError):
    """The API answered with an error status.

    Attributes:
        status: The HTTP status.
        error_id: The body's ``id`` (``"not_found"``...), or None when the body had none.
        message: The body's ``message``, or a short excerpt of a non-JSON body.
        request_id: The body's ``request_id``, else the ``x-request-id`` header.
        attempts: How many attempts were made before this answer was final.
        rate_limit: The answer's rate-limit headers.
    """

    status: int = 0

    def __init__(
        self,
        message: str,
        *,
        status: int,
        error_id: str | None = None,
        request_id: str | None = None,
        attempts: int = 1,
        rate_limit: RateLimitInfo | None = None,
        method: str = "",
        path: str = "",
    ) -> None:
        self.status = status
        self.error_id = error_id
        self.message = message
        self.request_id = request_id
        self.attempts = attempts
        self.rate_limit = rate_limit or RateLimitInfo()
        self.method = method
        self.path = path
        # Straight to Exception: a cooperative super() would reach RateLimitedError.__init__
        # in TooManyRequestsError and overwrite ``message`` with the whole text.
        Exception.__init__(self, self.__str__())

    def __str__(self) -> str:
        where = f" {self.method} {self.path}" if self.method else ""
        rid = f" (request_id={self.request_id})" if self.request_id else ""
        return f"{self.status} {self.error_id or 'error'}{where}: {self.message}{rid}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status}, error_id={self.error_id!r}, "
            f"message={self.message!r}, request_id={self.request_id!r}, attempts={self.attempts})"
        )


class BadRequestError(APIError):
    """400: the request was malformed (for example ``per_page`` out of range)."""


class AuthenticationError(APIError):
    """401: the token is missing, unknown or revoked."""


class PermissionDeniedError(APIError):
    """403: the token lacks the scope this operation needs (``cdn:read``...)."""


class NotFoundError(APIError):
    """404: no CDN endpoint with that id."""


class ConflictError(APIError):
    """409: the request conflicts with one in progress (an identical purge)."""


class UnprocessableEntityError(APIError):
    """422: the body was refused (bad origin, TTL, domain, or an origin already in use)."""


class TooManyRequestsError(APIError, RateLimitedError):
    """429: a budget was exceeded; raised only when retries could not absorb it."""

    def __init__(self, message: str, *, budget: str | None = None, **kwargs: Any) -> None:
        APIError.__init__(self, message, **kwargs)
        self.reset_at = self.rate_limit.reset
        self.budget = budget


class InternalServerError(APIError):
    """5xx: the server failed."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: TooManyRequestsError,
}


def error_class_for(status: int) -> type[APIError]:
    """The APIError subclass for an HTTP status."""
    if status >= 500:
        return InternalServerError
    return _BY_STATUS.get(status, APIError)


class CreateUnconfirmedError(CDNError):
    """A create may have happened: an attempt failed after it may have reached the server (a
    5xx, a connection lost after the request was written), and the lookup of its origin that
    would tell failed too. Look the origin up later (``endpoints.list``) before creating it
    again; a create is never reported failed while it may exist.

    Attributes:
        origin: The origin the endpoint was being created for.
        error: The create attempt's failure (also the ``__cause__``).
        lookup_error: Why the lookup could not tell.
    """

    def __init__(self, origin: str, error: CDNError, lookup_error: CDNError) -> None:
        super().__init__(
            f"the create of {origin} may have happened: it failed with "
            f"{type(error).__name__} after it may have reached the server, and looking the "
            f"origin up failed with {type(lookup_error).__name__}; look it up before "
            "creating it again"
        )
        self.origin = origin
        self.error = error
        self.lookup_error = lookup_error
        self.__cause__ = error


class PurgeError(CDNError):
    """Some paths of a purge failed (or were not confirmed).

    Attributes:
        report: The ``PurgeReport``: ``purged`` holds every path confirmed before the purge
            ended, ``failed`` every other path with its error.
        reason: The error every failed path failed with, when they all failed the same way
            (e.g. a ``NotFoundError`` for an unknown endpoint, an ``AuthenticationError``, a
            ``BudgetWaitTimeout`` on one budget): the same class, and for an API error the
            same status and error id, for a rate-limit error the same budget; messages may
            differ. None when they failed in different ways. It is also
            the exception's ``__cause__``, so ``except PurgeError as e: raise map(e.reason)``
            or a traceback shows it directly.
    """

    def __init__(self, report: PurgeReport) -> None:
        self.report = report
        failed = len(report.failed)
        errors = list(report.failed.values())
        first = errors[0] if errors else None
        same = first is not None and all(_kind(e) == _kind(first) for e in errors)
        self.reason: CDNError | None = first if same else None
        message = f"{failed} of {failed + len(report.purged)} paths failed to purge"
        if self.reason is not None:
            message += f": {type(self.reason).__name__}: {self.reason}"
        super().__init__(message)
        if self.reason is not None:
            self.__cause__ = self.reason


def _kind(error: CDNError) -> tuple[object, ...]:
    """What failure ``error`` is, for ``PurgeError.reason``: its class and the fields that say
    why, never a message that varies (a timeout's "0.399 s" and "0.400 s" are one failure)."""
    if isinstance(error, APIError):
        return (type(error), error.status, error.error_id)
    if isinstance(error, RateLimitedError):
        return (type(error), error.budget)
    if type(error) is CDNError:  # a plain CDNError says what it is only in its message
        return (CDNError, str(error))
    return (type(error),)


# CDNError and RateLimitInfo are defined below the errors (see ``_error_root``); they are
# documented here, so tracebacks and reprs name them here.
_publish(__name__, [globals()[name] for name in __all__])
