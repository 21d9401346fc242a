"""``create_app(settings)``: the console's FastAPI application (Jinja2 pages, plain forms)."""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import Engine
from starlette.middleware.sessions import SessionMiddleware
from starlette.responses import Response

from audit.console import auth_routes, pages
from audit.console.database import make_console_engine
from audit.console.images import ImageStore
from audit.console.security import Forbidden, NotSignedIn, SecurityHeaders, csrf_token
from audit.console.throttle import LoginThrottle
from core.settings import ConsoleSettings, Settings

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent


class ConsoleConfigError(RuntimeError):
    """Settings the console refuses to start with."""


@dataclass
class Console:
    settings: Settings
    engine: Engine
    images: ImageStore
    templates: Jinja2Templates
    throttle: LoginThrottle
    # Held while an export is built: one at a time per process (a second one gets 409).
    export_lock: threading.Lock = field(default_factory=threading.Lock)
    # days -> (monotonic time computed, overview data)
    overview_cache: dict[int, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    # deployment -> (monotonic time computed, the overview's Model panel)
    model_cache: dict[str, tuple[float, Any]] = field(default_factory=dict)

    def render(self, request: Request, name: str, status_code: int = 200,
               **context: Any) -> Response:
        context.setdefault("account", getattr(request.state, "account", None))
        context["csrf"] = csrf_token(request)
        context["flash"] = request.session.pop("flash", None)
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)


def _fmt_time(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else ""


def templates() -> Jinja2Templates:
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(("html", "svg"), default=True))
    env.filters["utc"] = _fmt_time
    env.filters["pct"] = lambda v: "" if v is None else f"{100 * float(v):.1f}%"
    env.filters["num"] = lambda v, d=3: "" if v is None else f"{float(v):.{d}f}"
    return Jinja2Templates(env=env)


def _session_secret(cfg: ConsoleSettings) -> str:
    if cfg.session_secret is not None:
        return cfg.session_secret.get_secret_value()
    log.warning("no BINAUDIT_CONSOLE__SESSION_SECRET: sessions are signed with a random "
                "secret of this process; everyone signs in again after a restart, and "
                "replicas do not share sessions")
    return secrets.token_urlsafe(32)


def _throttle(cfg: ConsoleSettings) -> LoginThrottle:
    return LoginThrottle(max_failures=cfg.login_max_failures,
                         max_failures_per_address=cfg.login_max_failures_per_address,
                         window_s=cfg.login_failure_window_s, concurrency=cfg.login_concurrency)


def create_app(settings: Settings, *, engine: Engine | None = None) -> FastAPI:
    cfg = settings.console
    problem = cfg.secret_problem(settings.environment)
    if problem:
        raise ConsoleConfigError(f"refusing to start the console: {problem}")
    own_engine = engine is None
    console = Console(settings, engine or make_console_engine(settings),
                      ImageStore(settings), templates(), _throttle(cfg))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if own_engine:
            console.engine.dispose()

    app = FastAPI(title="binaudit console", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.console = console
    app.add_middleware(SecurityHeaders, image_origin=console.images.origin()
                       if cfg.image_delivery == "presigned" else None)
    app.add_middleware(SessionMiddleware, secret_key=_session_secret(cfg),
                       session_cookie="binaudit_console", max_age=cfg.session_max_age_s,
                       same_site="lax", https_only=cfg.cookies_secure(settings.environment))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(auth_routes.router)
    app.include_router(pages.router)

    @app.exception_handler(NotSignedIn)
    async def _sign_in(request: Request, _: NotSignedIn) -> Response:
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> Response:
        log.warning("403 %s %s: %s", request.method, request.url.path, exc.message)
        return console.render(request, "error.html", status_code=403, title="Not allowed",
                              message=exc.message)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> HTMLResponse:
        return HTMLResponse("ok")

    return app
