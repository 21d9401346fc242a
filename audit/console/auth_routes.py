"""Sign-in and sign-out. Sign-in is throttled (``throttle.LoginThrottle``): 429 with
Retry-After after too many failures for a name or from an address, 503 when all password-check
slots are busy."""

from __future__ import annotations

import logging
import math

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse
from starlette.responses import Response

from audit.console.accounts import authenticate
from audit.console.database import as_login
from audit.console.security import check_csrf, sign_in
from audit.console.throttle import Busy

log = logging.getLogger(__name__)
router = APIRouter()


@router.get("/login")
def login_page(request: Request) -> Response:
    console = request.app.state.console
    return console.render(request, "login.html", account=None, error=None)


@router.post("/login")
def login(request: Request, name: str = Form(""), password: str = Form(""),
          csrf: str = Form("")) -> Response:
    console = request.app.state.console
    check_csrf(request, csrf)
    name = name.strip()
    address = request.client.host if request.client else "?"
    wait = console.throttle.retry_after(name, address)
    if wait is not None:
        log.warning("console sign-in throttled for %r from %s (%.0f s left)", name[:64],
                    address, wait)
        return _refused(request, 429, "Too many failed sign-ins: try again later.", wait)
    try:
        with console.throttle.password_check(), as_login(console.engine) as conn:
            account = authenticate(conn, name, password)
    except Busy:
        log.warning("console sign-in busy: all password-check slots taken (%s)", address)
        return _refused(request, 503, "The console is busy: try again in a moment.", 1)
    if account is None:
        console.throttle.failed(name, address)
        log.info("console sign-in refused for %r from %s", name[:64], address)
        return console.render(request, "login.html", status_code=401, account=None,
                              error="Wrong name or password.")
    console.throttle.succeeded(name)
    sign_in(request, account)
    log.info("console sign-in: %s (%s)", account.name, account.role)
    return RedirectResponse("/queue", status_code=303)


def _refused(request: Request, status: int, message: str, wait: float) -> Response:
    response = request.app.state.console.render(request, "login.html", status_code=status,
                                                account=None, error=message)
    response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return response


@router.post("/logout")
def logout(request: Request, csrf: str = Form("")) -> Response:
    check_csrf(request, csrf)
    request.session.clear()
    return RedirectResponse("/login", status_code=303)
