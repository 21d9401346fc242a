"""Console accounts: argon2id password hashes in ``console_users`` and the database role each
account's requests run as. Account management uses the admin database login (the CLI); sign-in
reads through the console's own login role."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Connection, select
from sqlalchemy.dialects.postgresql import insert

from core.tables import CONSOLE_DB_ROLES, CONSOLE_USER_ROLES, console_users

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9._@+-]{1,64}$")
MIN_PASSWORD = 10
_hasher = PasswordHasher()
# Verified when the name is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash("binaudit-console-dummy-password")


class AccountError(ValueError):
    """An account request that cannot be carried out (says why)."""


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    role: str  # viewer | reviewer

    @property
    def db_role(self) -> str:
        return CONSOLE_DB_ROLES[self.role]

    @property
    def can_review(self) -> bool:
        return self.role == "reviewer"


def validate(name: str, role: str, password: str | None) -> None:
    if not NAME_RE.match(name):
        raise AccountError("a name is 1-64 letters, digits or ._@+-")
    if role not in CONSOLE_USER_ROLES:
        raise AccountError(f"role must be one of {', '.join(CONSOLE_USER_ROLES)}")
    if password is not None and len(password) < MIN_PASSWORD:
        raise AccountError(f"a password has at least {MIN_PASSWORD} characters")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def upsert_account(conn: Connection, *, name: str, role: str, password: str | None) -> Account:
    """Create the account, or change its role (and password, when given). ``password`` None:
    the account signs in only through the trusted SSO header."""
    validate(name, role, password)
    values: dict[str, Any] = {"name": name, "role": role, "disabled": False}
    update = {"role": role, "disabled": False}
    if password is not None:
        values["password_hash"] = update["password_hash"] = hash_password(password)
    stmt = insert(console_users).values(**values).on_conflict_do_update(
        index_elements=["name"], set_=update).returning(console_users.c.id)
    account = Account(id=int(conn.execute(stmt).scalar_one()), name=name, role=role)
    log.info("console account %s: role %s%s", name, role,
             ", password set" if password is not None else "")
    return account


def disable_account(conn: Connection, name: str) -> bool:
    result = conn.execute(console_users.update().where(console_users.c.name == name)
                          .values(disabled=True))
    return bool(result.rowcount)


def find_account(conn: Connection, name: str) -> tuple[Account, str | None] | None:
    """The enabled account called ``name`` and its password hash."""
    u = console_users.c
    row = conn.execute(select(u.id, u.name, u.role, u.password_hash)
                       .where(u.name == name, u.disabled.is_(False))).one_or_none()
    if row is None or row.role not in CONSOLE_DB_ROLES:
        return None
    return Account(id=int(row.id), name=row.name, role=row.role), row.password_hash


def authenticate(conn: Connection, name: str, password: str) -> Account | None:
    """The account if ``password`` is its password; None otherwise (same cost either way)."""
    found = find_account(conn, name) if NAME_RE.match(name) else None
    stored = found[1] if found else None
    try:
        _hasher.verify(stored or _DUMMY_HASH, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if found is None or stored is None:
        return None
    return found[0]
