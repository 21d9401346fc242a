"""In-process HTTP clients of the console for its tests (signed in, or not)."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient

from tests.console_fixtures import PASSWORDS


def csrf_of(html: str) -> str:
    """The CSRF token of the first form of a page."""
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html[:500]
    return match.group(1)


def signed_in(app: Any, name: str | None = None) -> TestClient:
    """A client of ``app`` (not following redirects), signed in as ``name`` when given."""
    client = TestClient(app, follow_redirects=False)
    if name:
        page = client.get("/login")
        response = client.post("/login", data={"name": name, "password": PASSWORDS[name],
                                               "csrf": csrf_of(page.text)})
        assert response.status_code == 303, response.text
    return client
