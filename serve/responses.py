"""aiohttp answers of the endpoint: errors as JSON, and an outcome turned into a prediction or
the HTTP error that says why not (the contract itself is ``serve/app.py``)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from inference.compare import Prediction
from inference.pipeline import Outcome
from serve.app import HttpError, HttpKind, http_error


def settle(future: asyncio.Future[Outcome], outcome: Outcome) -> None:
    if not future.done():  # timed out or cancelled meanwhile
        future.set_result(outcome)


def prediction_or_raise(outcome: Outcome, *, from_s3: bool) -> Prediction:
    if outcome.prediction is not None:
        return outcome.prediction
    assert outcome.error is not None
    if outcome.retryable:
        raise HttpError(503, HttpKind.UNAVAILABLE, str(outcome.error), retry_after_s=1)
    raise http_error(outcome.error, from_s3=from_s3)


def too_large(size: int | None, limit: int) -> HttpError:
    what = f"{size} bytes" if size is not None else "larger"
    return HttpError(413, HttpKind.PAYLOAD_TOO_LARGE, f"body is {what}; limit {limit} bytes")


def from_aiohttp(exc: web.HTTPException) -> HttpError:
    kinds = {404: HttpKind.NOT_FOUND, 405: HttpKind.METHOD_NOT_ALLOWED,
             413: HttpKind.PAYLOAD_TOO_LARGE}
    return HttpError(exc.status, kinds.get(exc.status, f"http_{exc.status}"), exc.reason)


def error_response(err: HttpError) -> web.Response:
    response = web.json_response(err.body(), status=err.status, headers=err.headers())
    if err.close:
        response.force_close()  # "Connection: close"
    return response


async def send_and_close(request: web.Request, response: web.StreamResponse) -> None:
    """Send ``response`` now and close the connection behind it. Left to aiohttp, a body
    still unread would be drained for up to ``lingering_time`` (10 s) first: the very
    slow-loris client the answer is for would keep its connection."""
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()  # transport.close(): what was written is still flushed
