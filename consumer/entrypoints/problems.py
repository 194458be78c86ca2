"""Refusals as the outside sees them: an HTTP status (with the problem `type`, which is the
refusal's `problem`), or an exit code. The service says what kind of refusal it is
(`consumer.domain.errors.RefusalKind`); only here does a kind become a number."""

from __future__ import annotations

from consumer.domain.errors import Refusal, RefusalKind

HTTP_STATUS: dict[RefusalKind, int] = {
    RefusalKind.INVALID: 400,
    RefusalKind.FORBIDDEN: 403,
    RefusalKind.NOT_FOUND: 404,
    RefusalKind.CONFLICT: 409,
    RefusalKind.UNPROCESSABLE: 422,
    RefusalKind.NOT_CONFIGURED: 500,
    RefusalKind.UPSTREAM: 502,
    RefusalKind.UNAVAILABLE: 503,
}
# `calsync` exits 1 on any refusal (printed as one line), 130 when interrupted; `calsync
# consume` exits 3 when something still held it at the shutdown's bound and it was ended
# (one `shutdown_overran` error line says so).
REFUSED_EXIT_CODE = 1
INTERRUPTED_EXIT_CODE = 130
SHUTDOWN_OVERRAN_EXIT_CODE = 3


def http_status(refusal: Refusal) -> int:
    return HTTP_STATUS[refusal.kind]
