"""The console's database access: its own login role, and one transaction per request that
runs as the signed-in account's database role (``SET LOCAL ROLE``, as PostgREST does), so
Postgres enforces viewer/reviewer a second time, whatever the application does."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url

from audit.console.accounts import Account
from core.settings import Settings
from core.tables import CONSOLE_DB_ROLES

_ALLOWED_DB_ROLES = frozenset(CONSOLE_DB_ROLES.values())


def console_url(settings: Settings) -> str:
    """db.url with the console's login (user and password) in place of the admin's."""
    cfg = settings.console
    url = make_url(settings.db.url.get_secret_value()).set(
        username=cfg.db_user,
        password=cfg.db_password.get_secret_value() if cfg.db_password else None)
    return url.render_as_string(hide_password=False)


def make_console_engine(settings: Settings) -> Engine:
    return create_engine(console_url(settings), connect_args=settings.db.connect_args(),
                         pool_size=settings.console.db_pool_size, pool_pre_ping=True)


@contextmanager
def as_account(engine: Engine, account: Account) -> Iterator[Connection]:
    """A transaction running as ``account``'s database role, with ``binaudit.reviewer`` set
    to the account's name for this transaction only; committed on success."""
    role = account.db_role
    if role not in _ALLOWED_DB_ROLES:  # identifiers cannot be bound parameters: allow-list
        raise PermissionError(f"no database role for {account.role!r}")
    with engine.begin() as conn:
        conn.execute(text(f"SET LOCAL ROLE {role}"))
        # Read by the review trigger (migration 0006): the reviewer is this account, whatever
        # a form or a query says.
        conn.execute(text("SELECT set_config('binaudit.reviewer', :name, true)"),
                     {"name": account.name})
        yield conn


@contextmanager
def as_login(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction as the console login itself (reads ``console_users`` only)."""
    with engine.begin() as conn:
        yield conn


def set_login_password(admin: Connection, settings: Settings) -> None:
    """Give the console's login role the configured password (run with the admin login)."""
    cfg = settings.console
    if cfg.db_password is None:
        raise ValueError("BINAUDIT_CONSOLE__DB_PASSWORD is not set")
    statement = admin.execute(text("SELECT format('ALTER ROLE %I PASSWORD %L', :r, :p)"),
                              {"r": cfg.db_user, "p": cfg.db_password.get_secret_value()})
    # Run as is by the driver (no bind-parameter parsing of the quoted password).
    cursor = admin.connection.driver_connection.cursor()  # type: ignore[union-attr]
    cursor.execute(statement.scalar_one())
