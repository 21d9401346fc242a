"""Commands contributed by the worker package (glue only: each calls a named module)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Mount the worker package's commands on the root app."""
    # Each feature module owns its typer commands; add one line per module.
    from worker.abid_fetch import data_app
    from worker.publisher import publish_command

    app.add_typer(data_app, name="data")
    app.command("publish")(publish_command)
    from worker.run_cli import worker

    app.command("worker")(worker)
    from worker.serve import serve_command

    app.command("serve")(serve_command)

    from worker.summary import summary

    app.command("summary")(summary)
    from worker.replay import replay_command

    app.command("replay")(replay_command)
    from worker.audit_cli import mismatches_command, review_app

    app.command("mismatches")(mismatches_command)
    app.add_typer(review_app, name="review")
