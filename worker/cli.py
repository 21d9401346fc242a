"""Commands contributed by the worker package (glue only: each calls a named module)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Mount the worker package's commands on the root app."""
    # Imported here, not at module level: the command modules import binaudit.cli themselves.
    from worker.abid_fetch import data_app
    from worker.audit_cli import mismatches_command, review_app
    from worker.publisher import publish_command
    from worker.replay import replay_command
    from worker.run_cli import worker
    from worker.serve import serve_command
    from worker.summary import summary

    app.add_typer(data_app, name="data")
    app.command("publish")(publish_command)
    app.command("worker")(worker)
    app.command("summary")(summary)
    app.command("replay")(replay_command)
    app.command("mismatches")(mismatches_command)
    app.add_typer(review_app, name="review")
    app.command("serve")(serve_command)
