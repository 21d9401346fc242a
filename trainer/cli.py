"""Commands contributed by the trainer package: `binaudit train ...`, `binaudit model ...`.

Glue only: each command turns flags into a frozen config and calls one named module.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from core.cliutil import console, fail, settings_of
from core.model.card import ArtifactError, new_version
from core.quality import headline
from inference.autotune import tune_artifact
from trainer import cli_ensemble, cli_lifecycle, cli_recipe, cli_whole, data
from trainer.checkpoint import load_checkpoint
from trainer.cli_data import data_app
from trainer.config import FitConfig, read_hyperparameters
from trainer.datasets import list_object_sizes
from trainer.distributed import dist_info
from trainer.evaluate import calibrate_artifact, evaluate_artifact, write_evaluation
from trainer.export import DEFAULT_BACKENDS, export_artifact
from trainer.fetch import fetch_with_settings
from trainer.train import fit
from trainer.tune import SearchSpace, tune

log = logging.getLogger(__name__)
train_app = typer.Typer(help="Prepare data, fine-tune, tune, profile and evaluate the counter.",
                        no_args_is_help=True)
model_app = typer.Typer(help="Model artifacts: registry and stages, export, inference tuning.",
                        no_args_is_help=True)

DEFAULT_MANIFEST = Path("artifacts/data/manifest.json")
Opt = typer.Option


def register(app: typer.Typer) -> None:
    """Mount the trainer package's commands on the root app."""
    cli_recipe.register(train_app)
    cli_whole.register(train_app)
    cli_ensemble.register(train_app)
    app.add_typer(train_app, name="train")
    cli_lifecycle.add_commands(model_app, app)
    app.add_typer(model_app, name="model")
    app.add_typer(data_app, name="data")


@train_app.command("prepare")
def prepare_cmd(
    ctx: typer.Context,
    out: Annotated[Path, Opt(help="Manifest JSON to write (a CSV copy goes next to it).")
                   ] = DEFAULT_MANIFEST,
    file_list: Annotated[Path | None, Opt(help="The reference's file_list.json.")] = None,
    ids: Annotated[Path | None, Opt(help="File with one ABID id per line.")] = None,
    labels: Annotated[Path | None, Opt(help="labels.csv (image,expected_quantity) or an "
                                            "auditors' CSV (id,image_path,expected_quantity).")
                      ] = None,
    source_dir: Annotated[list[Path] | None, Opt(
        help="Local ABID-format folder (images/, metadata/, labels.csv); repeat it to combine "
             "folders, e.g. the sample, the extra set and reviewed bins.")] = None,
    bucket: Annotated[str | None, Opt(help="Fetch the listed ids from this ABID bucket first "
                                           "(`binaudit data fetch`) into --source-dir "
                                           "(default data/abid).")] = None,
    s3_bucket: Annotated[str | None, Opt(
        help="Train straight from this bucket in the ABID layout (bin-images/<id>.jpg): "
             "nothing is downloaded; labels from --file-list or --labels.")] = None,
    classes: Annotated[str, Opt(help="Item counts that are classes, e.g. 1-5.")] = "1-5",
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> None:
    """Deterministic, stratified train/val/test split manifest with a data fingerprint."""
    given = [x for x in (file_list, ids, labels) if x is not None]
    if len(given) > 1:
        fail("give one of --file-list, --ids, --labels")
    dirs = list(source_dir or [])
    if bucket is not None:
        dirs = dirs or [Path("data/abid")]
        wanted = _listed_ids(file_list=file_list, ids=ids, labels=labels)
        _fetch_from_bucket(ctx, bucket, wanted, dirs[0])
    fractions = (1.0 - val_fraction - test_fraction, val_fraction, test_fraction)
    try:
        entries, sizes = _entries(ctx, dirs, s3_bucket, file_list=file_list, ids=ids,
                                  labels=labels)
        manifest = data.build_manifest(
            entries, dirs[0] if dirs else Path("."), classes=data.parse_classes(classes),
            seed=seed, fractions=fractions, object_sizes=sizes,
            source=f"s3://{s3_bucket}" if s3_bucket else ",".join(map(str, dirs)))
    except data.DataError as exc:
        fail(str(exc))
    data.write_manifest(manifest, out)
    counts = {s: len(manifest.split(s)) for s in data.SPLITS}
    console.print(f"manifest {out}: {len(manifest.items)} images {counts}, "
                  f"fingerprint {manifest.fingerprint[:12]}")
    if manifest.excluded:
        console.print(f"excluded {len(manifest.excluded)} ids whose count is not a class "
                      f"({classes})")
    if manifest.missing:
        shown = ", ".join(manifest.missing[:5])
        console.print(f"[yellow]{len(manifest.missing)} ids missing from {manifest.source}"
                      f"[/yellow] (e.g. {shown})")


def _entries(ctx: typer.Context, dirs: list[Path], s3_bucket: str | None, *,
             file_list: Path | None, ids: Path | None, labels: Path | None
             ) -> tuple[list[data.LabeledId], dict[str, int] | None]:
    """The labelled ids of ``prepare``, resolved to local paths or ``s3://`` URIs."""
    if s3_bucket is not None:
        if file_list is not None:
            listed = data.read_file_list(file_list)
        elif labels is not None:
            listed = data.read_labels_csv(labels)
        else:
            raise data.DataError("--s3-bucket needs --file-list or --labels")
        sizes = list_object_sizes(settings_of(ctx).s3, s3_bucket, "bin-images/")
        return data.entries_in_bucket(listed, s3_bucket, sizes), sizes
    if not dirs:
        raise data.DataError("--source-dir (a local ABID-format folder) or --s3-bucket is "
                             "required")
    if file_list is not None:
        return data.read_file_list(file_list), None
    if ids is not None:
        return data.read_ids(ids, dirs[0]), None
    if labels is not None:
        return data.read_labels_csv(labels), None
    return data.entries_from_dirs(dirs), None


def _listed_ids(*, file_list: Path | None, ids: Path | None, labels: Path | None) -> list[str]:

    if file_list is not None:
        return [e.id for e in data.read_file_list(file_list)]
    if ids is not None:
        return [x.strip() for x in ids.read_text().splitlines()
                if x.strip() and not x.startswith("#")]
    if labels is not None:
        return [e.id for e in data.read_labels_csv(labels)]
    fail("--bucket needs the ids to fetch: give --file-list, --ids or --labels")


def _fetch_from_bucket(ctx: typer.Context, bucket: str, ids: list[str], out_dir: Path) -> None:
    """Download the ids (resumable) with the data client, then prepare from the local copy."""

    abid = settings_of(ctx).abid.model_copy(update={"bucket": bucket})
    summary = asyncio.run(fetch_with_settings(abid, ids, out_dir=out_dir, progress=True))
    console.print(f"fetched from s3://{bucket}: {summary.downloaded} downloaded, "
                  f"{summary.skipped} already complete, {len(summary.missing)} missing")


def _fit_config(**kw: Any) -> Any:
    """Flags + optional hp.json -> a FitConfig (flags win over the file, the file over
    defaults); with --resume and no --out, the checkpoint's run directory."""
    hp_file = kw.pop("hyperparameters")
    values: dict[str, Any] = {}
    if kw.get("resume") is not None:
        # A resumed run starts from the checkpoint's config; flags given now override it.

        saved = load_checkpoint(kw["resume"])["config"]
        values = {k: v for k, v in saved.items() if k not in ("out", "resume", "profile")}
        values["out"] = Path(kw["resume"]).parent
    values |= read_hyperparameters(hp_file) if hp_file else {}
    values |= {k: v for k, v in kw.items() if v is not None}
    values.setdefault("manifest", DEFAULT_MANIFEST)
    values.setdefault("version", new_version(values.get("model", "efficientnet_lite0")))
    values.setdefault("out", Path("artifacts/models") / values["version"])
    return FitConfig(**values)


@train_app.command("fit")
def fit_cmd(
    ctx: typer.Context,
    manifest: Annotated[Path | None, Opt(help="Manifest from `train prepare` "
                                            f"[default: {DEFAULT_MANIFEST}]")] = None,
    hyperparameters: Annotated[Path | None, Opt(help="hp.json with batch-size, epochs, lr.")
                               ] = None,
    batch_size: int | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    freeze: Annotated[str | None, Opt(help="backbone | none | k (train the last k blocks)")
                      ] = None,
    image_size: int | None = None,
    model: Annotated[str | None, Opt(help="efficientnet_b4 | efficientnet_lite0")] = None,
    weights: Annotated[str | None, Opt(help="PATH | default | none")] = None,
    out: Annotated[Path | None, Opt(help="Run directory (artifact + checkpoints + reports).")
                   ] = None,
    seed: int | None = None,
    workers: int | None = None,
    patience: Annotated[int | None, Opt(help="Early stop after N epochs without val gain.")
                        ] = None,
    resume: Annotated[Path | None, Opt(help="checkpoint.pt to continue from.")] = None,
    profile: Annotated[bool, Opt(help="Profile a window of steps -> <out>/profile/.")] = False,
    profile_steps: int | None = None,
    lr_schedule: Annotated[str | None, Opt(help="constant | cosine")] = None,
    weight_decay: float | None = None,
    device: Annotated[str | None, Opt(help="auto | cpu | cuda")] = None,
    progress: bool = True,
    debug_rank_metrics: Annotated[bool, Opt(hidden=True)] = False,
) -> None:
    """Fine-tune the counter (single process, or each rank under torchrun)."""
    config = _fit_config(
        manifest=manifest, hyperparameters=hyperparameters, batch_size=batch_size,
        epochs=epochs, lr=lr, freeze=freeze, image_size=image_size, model=model,
        weights=weights, out=out, seed=seed, workers=workers, patience=patience, resume=resume,
        profile=profile or None, profile_steps=profile_steps, lr_schedule=lr_schedule,
        weight_decay=weight_decay, device=device, progress=progress,
        debug_rank_metrics=debug_rank_metrics or None)
    result = fit(config, s3=settings_of(ctx).s3)
    if dist_info().is_main:
        _print_fit(config.out, result)


def _print_fit(out: Path, result: Any) -> None:
    console.print(f"run {out}: best val loss {result.best_val_loss:.4f} "
                  f"(epoch {result.best_epoch})")
    if result.test_metrics is not None:
        t, b = result.test_metrics, result.baseline
        console.print(f"test: accuracy {t['accuracy']:.3f}, RMSE {t['rmse']:.3f}, "
                      f"off-by-one {t['off_by_one_accuracy']:.3f} (n={t['n']}); majority "
                      f"baseline accuracy {b['accuracy']:.3f}, RMSE {b['rmse']:.3f}")


@train_app.command("tune")
def tune_cmd(
    manifest: Path = DEFAULT_MANIFEST,
    out: Path = Path("artifacts/tune"),
    trials: int = 20,
    parallel: Annotated[int, Opt(help="Trials at once in this process (threads).")] = 1,
    storage: Annotated[str | None, Opt(help="Optuna storage URL (default sqlite in --out; a "
                                            "postgres URL shares trials across machines).")
                       ] = None,
    study_name: str = "binaudit-counter",
    lr_min: float = 0.001,
    lr_max: float = 0.1,
    batch_sizes: Annotated[str, Opt(help="Comma-separated choices.")] = "32,64,128,256,512",
    epochs_min: int = 2,
    epochs_max: int = 20,
    freeze: str = "backbone",
    image_size: int = 224,
    model: str = "efficientnet_lite0",
    weights: str = "default",
    seed: int = 0,
    workers: int = 0,
    final_fit: Annotated[bool, Opt(help="Fit once with the best params and test it.")] = True,
) -> None:
    """Optuna TPE + median pruning on validation loss; writes hp.json, trials, plot."""
    space = SearchSpace(lr_low=lr_min, lr_high=lr_max, epochs_low=epochs_min,
                        epochs_high=epochs_max,
                        batch_sizes=tuple(int(b) for b in batch_sizes.split(",")))
    base = _fit_config(manifest=manifest, hyperparameters=None, freeze=freeze,
                       image_size=image_size, model=model, weights=weights, seed=seed,
                       workers=workers, out=out / "best", device="auto", progress=False)
    result = tune(base, space=space, trials=trials, out=out, parallel=parallel,
                  storage=storage, study_name=study_name, seed=seed, final_fit=final_fit)
    console.print(f"best params {result.best_params} -> {out / 'hp.json'}")
    if result.final is not None:
        _print_fit(out / "best", result.final)


@train_app.command("evaluate")
def evaluate_cmd(
    artifact: Path,
    manifest: Path = DEFAULT_MANIFEST,
    split: str = "test",
    out: Annotated[Path | None, Opt(help="JSON to write (default <artifact>/eval-<split>.json)")
                   ] = None,
) -> None:
    """Accuracy, RMSE, confusion matrix, calibration and audit quality of an artifact."""
    try:
        result = evaluate_artifact(artifact, manifest, split=split)
    except ArtifactError as exc:
        fail(str(exc))
    path = write_evaluation(result, out or artifact / f"eval-{split}.json")
    console.print(json.dumps({k: result[k] for k in ("n", "accuracy", "rmse",
                                                     "off_by_one_accuracy")}))
    table = Table("audit quality (each image once with a correct, once with a wrong manifest)",
                  "value")
    for name, value in headline(result["audit_quality"]):
        table.add_row(name, value)
    console.print(table)
    console.print(f"written to {path}")


@train_app.command("calibrate")
def calibrate_cmd(
    artifact: Path,
    manifest: Path = DEFAULT_MANIFEST,
    split: Annotated[str, Opt(help="Split to fit on (never the test split you report).")
                     ] = "val",
    target_false_alarm_rate: Annotated[float, Opt(min=0.0, max=1.0)] = 0.05,
) -> None:
    """(Re)fit an artifact's temperature and decision thresholds on a split; rewrites its card."""
    try:
        card = calibrate_artifact(artifact, manifest, split=split, target=target_false_alarm_rate)
    except (ArtifactError, ValueError) as exc:
        fail(str(exc))
    cal, dec = card.calibration, card.decision
    console.print(f"{card.version}: temperature {cal.temperature:.3f} (ECE {cal.ece_before} -> "
                  f"{cal.ece_after}); match when P >= {dec.match_min_p:.4f}, mismatch when "
                  f"1 - P >= {dec.mismatch_min_score:.4f}; measured on {split}: {dec.measured}")


@train_app.command("quickstart")
def quickstart_cmd(
    ctx: typer.Context,
    source_dir: Path = Path("../shared/data/abid-sample"),
    out: Annotated[Path, Opt(help="Models root; the run goes to <out>/<version> and "
                                  "<out>/current points at it.")] = Path("artifacts/models"),
    epochs: int = 6,
    image_size: int = 224,
) -> None:
    """prepare + fit of pretrained EfficientNet-Lite0 (frozen backbone) on the ABID sample."""
    manifest_path = out / "quickstart-manifest.json"
    manifest = data.build_manifest(data.read_labels_csv(source_dir / "labels.csv"), source_dir,
                                   classes=[1, 2, 3, 4, 5], seed=0)
    data.write_manifest(manifest, manifest_path)
    config = _fit_config(manifest=manifest_path, hyperparameters=None, epochs=epochs,
                         batch_size=32, lr=3e-3, freeze="backbone", image_size=image_size,
                         model="efficientnet_lite0", weights="default")
    config = config.model_copy(update={"out": out / config.version})
    result = fit(config, s3=settings_of(ctx).s3)
    current = out / "current"
    if current.is_symlink() or not current.exists():
        current.unlink(missing_ok=True)
        current.symlink_to(config.version)
    _print_fit(config.out, result)


@model_app.command("export")
def export_cmd(
    ctx: typer.Context,
    path: Path,
    images: Annotated[Path, Opt(help="Folder of sample JPEGs for the parity check.")],
    backends: Annotated[str, Opt(help="Backends to check, comma-separated.")
                        ] = ",".join(DEFAULT_BACKENDS),
    limit: Annotated[int, Opt(help="Check at most this many images (0 = all).")] = 0,
) -> None:
    """Write model.onnx and openvino/model.xml into the artifact at PATH; check parity."""
    files = sorted(images.glob("*.jpg"))[: limit or None]
    if not files:
        fail(f"no .jpg images in {images}")
    try:
        report = export_artifact(path, files, settings_of(ctx).inference,
                                 [b.strip() for b in backends.split(",") if b.strip()])
    except ArtifactError as exc:
        fail(str(exc))
    for entry in report["parity"]:
        console.print(f"{entry['backend']}: max |Δprob| {entry['max_abs_diff_prob']:.2e} "
                      f"(tolerance {entry['tolerance']:.0e}), same argmax "
                      f"{entry['argmax_agree']}/{entry['images']} (+{entry['argmax_ties']} "
                      f"ties): {'ok' if entry['ok'] else 'FAILED (form removed)'}")
    for name, reason in {**report["export_errors"], **report["skipped"]}.items():
        console.print(f"{name}: not checked: {reason}")
    if not report["parity"] or not all(e["ok"] for e in report["parity"]):
        raise typer.Exit(1)


@model_app.command("tune-inference")
def tune_inference_cmd(
    ctx: typer.Context,
    path: Annotated[Path | None, typer.Argument(help="Artifact (default inference.model)")
                    ] = None,
    force: Annotated[bool, Opt(help="Measure again even if a cached result exists.")] = False,
) -> None:
    """Measure backends x batch sizes on this device and cache the choice (as a worker
    would at start-up); print the table."""
    inference = settings_of(ctx).inference
    try:
        result, _backend, _card, cached = tune_artifact(path or inference.model_path, inference,
                                                        force=force)
    except ArtifactError as exc:
        fail(str(exc))
    for m in sorted(result.measurements, key=lambda m: -m.images_per_s):
        console.print(f"{m.backend:>22} batch {m.batch_size:>4}: {m.images_per_s:8.1f} img/s")
    for name, reason in result.skipped.items():
        console.print(f"{name:>22} skipped: {reason}")
    console.print(f"chosen: {result.backend} at batch {result.batch_size}, max wait "
                  f"{result.max_wait_ms} ms ({'cached' if cached else 'measured now'}; "
                  f"{result.device})")
