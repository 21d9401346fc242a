"""``train tune``: Optuna TPE search over lr / batch size / epochs on VALIDATION loss.

The reference tuned on average test loss, which leaks the test split into model selection;
here the test split is evaluated once, at the end, with the best parameters.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from pydantic import BaseModel, ConfigDict

from core import plots
from core.model.card import new_version
from trainer.config import FitConfig, write_hyperparameters
from trainer.train import FitResult, fit

log = logging.getLogger(__name__)


class SearchSpace(BaseModel):
    """Defaults are the reference job's ranges."""

    model_config = ConfigDict(frozen=True)
    lr_low: float = 0.001
    lr_high: float = 0.1
    batch_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    epochs_low: int = 2
    epochs_high: int = 20


@dataclass
class TuneResult:
    study: optuna.Study
    best_params: dict[str, Any]
    final: FitResult | None


def _objective(base: FitConfig, space: SearchSpace, out: Path) -> Any:
    def objective(trial: optuna.Trial) -> float:
        params = {
            "lr": trial.suggest_float("lr", space.lr_low, space.lr_high, log=True),
            "batch_size": trial.suggest_categorical("batch_size", list(space.batch_sizes)),
            "epochs": trial.suggest_int("epochs", space.epochs_low, space.epochs_high),
        }
        config = base.model_copy(update={
            **params, "out": out / "trials" / f"{trial.number:04d}", "save_checkpoints": False,
            "evaluate_test": False, "write_artifact": False, "progress": False,
            "profile": False, "resume": None,
        })

        def report(epoch: int, record: dict[str, float]) -> None:
            trial.report(record["val_loss"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        return fit(config, on_epoch=report).best_val_loss

    return objective


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    return [{
        "number": t.number, "state": t.state.name, "val_loss": t.value,
        "lr": t.params.get("lr"), "batch-size": t.params.get("batch_size"),
        "epochs": t.params.get("epochs"),
        "epochs_run": len(t.intermediate_values) or None,
        "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
        if t.datetime_complete and t.datetime_start else None,
    } for t in study.trials]


def write_trials(rows: list[dict[str, Any]], out: Path) -> None:
    """``trials.csv`` and ``trials.md``."""
    if not rows:
        return
    with (out / "trials.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fmt = lambda v: f"{v:.5g}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(fmt(v) for v in row.values()) + " |" for row in rows]
    (out / "trials.md").write_text("\n".join(lines) + "\n")


def tune(
    base: FitConfig, *, space: SearchSpace, trials: int, out: Path, parallel: int = 1,
    storage: str | None = None, study_name: str = "binaudit-counter", seed: int = 0,
    pruner_startup: int = 2, final_fit: bool = True,
) -> TuneResult:
    """Run ``trials`` trials (``parallel`` at once in this process; more processes or machines
    join by sharing ``storage``), write hp.json + trials + plot, then fit once with the best."""
    out.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=study_name, storage=storage or f"sqlite:///{(out / 'optuna.db').resolve()}",
        direction="minimize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=pruner_startup, n_warmup_steps=1),
    )
    study.optimize(_objective(base, space, out), n_trials=trials, n_jobs=parallel,
                   catch=(RuntimeError,))
    rows = trial_rows(study)
    write_trials(rows, out)
    plots.optimisation_history(
        [r["val_loss"] if r["state"] == "COMPLETE" else None for r in rows],
        out / "optimisation_history.png")
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise RuntimeError(f"no trial of study {study_name!r} completed; see {out / 'trials.md'}")
    best = study.best_params
    write_hyperparameters(out / "hp.json", batch_size=best["batch_size"],
                          epochs=best["epochs"], lr=best["lr"])
    log.info("best trial %d: val loss %.4f with %s", study.best_trial.number,
             study.best_value, best)
    final = None
    if final_fit:
        final = fit(base.model_copy(update={
            "lr": best["lr"], "batch_size": best["batch_size"], "epochs": best["epochs"],
            "out": out / "best", "profile": False, "resume": None,
            "version": new_version(base.model)}))
    return TuneResult(study=study, best_params=best, final=final)
