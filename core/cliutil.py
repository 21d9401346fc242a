"""What every room's Typer commands share: one rich console, the Settings object the root
callback built, and command-line overrides validated exactly like settings.

Domain modules never import this (or Typer); only the rooms' ``cli.py`` files do.
"""

from __future__ import annotations

from typing import Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console

from core.settings import Settings

console = Console()


def settings_of(ctx: typer.Context) -> Settings:
    """The frozen Settings built once by the root callback (``binaudit.cli``)."""
    obj = ctx.find_root().obj
    assert isinstance(obj, Settings), "root callback did not run"
    return obj


def with_overrides(settings: Settings, **sections: dict[str, Any]) -> Settings:
    """A new Settings with some nested fields replaced (None means "not given").

    The sections are rebuilt through their pydantic models, so an override gets the same
    validation as the setting itself (``--max-batch-size 0`` is refused here, not deep inside
    the batcher).
    """
    update = {}
    for name, values in sections.items():
        given = {k: v for k, v in values.items() if v is not None}
        if given:
            section = getattr(settings, name)
            try:
                update[name] = type(section).model_validate({**section.model_dump(), **given})
            except ValidationError as exc:
                fail(_describe(exc))
    return settings.model_copy(update=update)


def check_device(device: str) -> None:
    """``--device cuda`` (or the setting) on a machine without CUDA is the user's mistake:
    say so and exit 2, rather than fail later or silently run on the CPU."""
    if device != "cuda":
        return
    import torch  # only here: most commands never need it

    if not torch.cuda.is_available():
        fail("invalid option: --device cuda, but torch sees no CUDA device on this machine "
             "(use --device cpu or auto)")


def _describe(exc: ValidationError) -> str:
    parts = [f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}"
             for e in exc.errors()]
    return "invalid option: " + "; ".join(parts)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a red error line and exit with ``code`` (2: the user's input was wrong)."""
    console.print(f"[red]{message}[/red]")
    raise typer.Exit(code)
