"""Who is asking, and is the form theirs: session sign-in (or a trusted SSO header), CSRF
tokens bound to the session, and the security headers every response carries."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import Request
from sqlalchemy import Engine
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import Response

from audit.console.accounts import Account, find_account
from audit.console.database import as_login
from core.settings import ConsoleSettings

log = logging.getLogger(__name__)

CSP = ("default-src 'self'; img-src 'self' data:{extra}; script-src 'self'; "
       "style-src 'self' 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'; object-src 'none'")


class NotSignedIn(Exception):
    """Raised by ``current_account``: the handler redirects to the sign-in page."""


class Forbidden(Exception):
    """The account may not do this (answered 403)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def csrf_token(request: Request) -> str:
    """This session's CSRF token (created on first use)."""
    token = request.session.get("csrf")
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def check_csrf(request: Request, submitted: Any) -> None:
    expected = request.session.get("csrf")
    if not (isinstance(expected, str) and isinstance(submitted, str) and submitted
            and secrets.compare_digest(expected.encode(), submitted.encode())):
        raise Forbidden("CSRF token missing or wrong: reload the page and try again")


def sign_in(request: Request, account: Account) -> None:
    """A fresh session for ``account`` (new CSRF token: no fixation of a pre-login session)."""
    request.session.clear()
    request.session.update({"user": account.name, "csrf": secrets.token_urlsafe(32)})


def current_account(request: Request, engine: Engine, cfg: ConsoleSettings) -> Account:
    """The signed-in account, read again on every request (a disabled account or a changed
    role takes effect at once). The SSO header counts only from a trusted proxy."""
    name: str | None = None
    header = cfg.trusted_user_header
    if header and request.client and request.client.host in cfg.trusted_proxies:
        name = request.headers.get(header) or None
    if name is None:
        user = request.session.get("user")
        name = user if isinstance(user, str) else None
    if name is None:
        raise NotSignedIn()
    with as_login(engine) as conn:
        found = find_account(conn, name)
    if found is None:
        request.session.pop("user", None)
        raise NotSignedIn()
    return found[0]


class SecurityHeaders(BaseHTTPMiddleware):
    def __init__(self, app: Any, image_origin: str | None = None) -> None:
        super().__init__(app)
        self.csp = CSP.format(extra=f" {image_origin}" if image_origin else "")

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", self.csp)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if "cache-control" not in response.headers:
            response.headers["Cache-Control"] = "no-store"
        return response
