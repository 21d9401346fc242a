"""Sign-in and sign-out."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse
from starlette.responses import Response

from audit.console.accounts import authenticate
from audit.console.database import as_login
from audit.console.security import check_csrf, sign_in

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
    with as_login(console.engine) as conn:
        account = authenticate(conn, name.strip(), password)
    if account is None:
        log.info("console sign-in refused for %r from %s", name[:64],
                 request.client.host if request.client else "?")
        return console.render(request, "login.html", status_code=401, account=None,
                              error="Wrong name or password.")
    sign_in(request, account)
    log.info("console sign-in: %s (%s)", account.name, account.role)
    return RedirectResponse("/queue", status_code=303)


@router.post("/logout")
def logout(request: Request, csrf: str = Form("")) -> Response:
    check_csrf(request, csrf)
    request.session.clear()
    return RedirectResponse("/login", status_code=303)
