"""`python -m binaudit ...` (same as the `binaudit` console script)."""

from binaudit.cli import app

app()
