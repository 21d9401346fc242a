"""Does the trainer's data loading scale? One training epoch per dataset size, whole tree measured.

    python -m bench.data_scaling [--source-dir data/abid-extra] [--sizes 1000,10000]
                                 [--workers 2] [--torchrun] [--append]

For each size N: a seeded subset of N labelled images of the extra set (nested: the first N of
one seeded shuffle of every image whose count is a class) -> ``binaudit train prepare`` (small
val/test splits) -> ``binaudit train fit`` for one epoch (frozen Lite0 at 224, batch 64) as a
child process, while :class:`bench.proctree.TreeSampler` sums RSS and PSS over the child and
all its descendants (the DataLoader workers). Epoch time, data-wait share and images/s come
from the run's ``history.json``. ``--torchrun`` adds a 2-rank ``torchrun`` run (gloo, one
DataLoader worker per rank) over every labelled image whose count is a class.

Writes ``<out>/data-scaling.json`` and ``.md`` (bench/data_scaling_report.py).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.data_scaling_report import write_results
from bench.env import load_average, machine_info
from bench.proctree import TreeSampler
from trainer.data import parse_classes

log = logging.getLogger("bench.data_scaling")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results"
SOURCE_CANDIDATES = (REPO / "data" / "abid-extra", REPO.parent / "main" / "data" / "abid-extra",
                     REPO.parent / "shared" / "data" / "abid-extra")


@dataclass(frozen=True)
class RunSpec:
    """One measured child run: a name, its manifest, and how it trains."""

    name: str
    manifest: Path
    out: Path
    workers: int
    batch_size: int
    ranks: int = 1


def default_source() -> Path | None:
    """``$BINAUDIT_EXTRA_DIR`` or the first extra-set folder that has a labels.csv."""
    env = os.environ.get("BINAUDIT_EXTRA_DIR")
    for candidate in ([Path(env)] if env else []) + list(SOURCE_CANDIDATES):
        if (candidate / "labels.csv").is_file() and (candidate / "images").is_dir():
            return candidate
    return None


def labelled_rows(source: Path, classes: list[int]) -> list[dict[str, str]]:
    """labels.csv rows whose count is a class and whose image exists."""
    with (source / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    wanted = set(classes)
    return [r for r in rows if int(r["expected_quantity"]) in wanted
            and (source / r["image"]).is_file()]


def write_subset(rows: list[dict[str, str]], n: int, seed: int, path: Path) -> int:
    """The first ``n`` rows of one seeded shuffle (so smaller subsets nest in larger ones)."""
    order = sorted(rows, key=lambda r: r["image"])
    random.Random(seed).shuffle(order)
    chosen = order[:n]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "expected_quantity"])
        writer.writeheader()
        writer.writerows({"image": r["image"], "expected_quantity": r["expected_quantity"]}
                         for r in chosen)
    return len(chosen)


def binaudit_cmd() -> list[str]:
    """The CLI of this checkout's interpreter."""
    return [sys.executable, "-m", "binaudit"]


def prepare(source: Path, labels: Path | None, manifest: Path, args: argparse.Namespace) -> None:
    """``binaudit train prepare`` with small val/test splits (most images train)."""
    cmd = [*binaudit_cmd(), "train", "prepare", "--source-dir", str(source), "--classes",
           args.classes, "--seed", str(args.seed), "--val-fraction", str(args.val_fraction),
           "--test-fraction", str(args.test_fraction), "--out", str(manifest)]
    if labels is not None:
        cmd += ["--labels", str(labels)]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True)


def fit_flags(spec: RunSpec, args: argparse.Namespace) -> list[str]:
    """``train fit`` flags of every measured run (one epoch, frozen backbone, no bar)."""
    return ["train", "fit", "--manifest", str(spec.manifest), "--out", str(spec.out),
            "--epochs", "1", "--freeze", "backbone", "--model", "efficientnet_lite0",
            "--image-size", str(args.image_size), "--batch-size", str(spec.batch_size),
            "--workers", str(spec.workers), "--seed", str(args.seed), "--device", "cpu",
            "--no-progress"]


def fit_command(spec: RunSpec, args: argparse.Namespace) -> list[str]:
    """The child's argv: ``python -m binaudit train fit`` or ``torchrun ... -m binaudit``."""
    if spec.ranks == 1:
        return [*binaudit_cmd(), *fit_flags(spec, args)]
    torchrun = str(Path(sys.executable).parent / "torchrun")
    return [torchrun, "--standalone", "--nproc-per-node", str(spec.ranks), "-m", "binaudit",
            *fit_flags(spec, args)]


def child_env() -> dict[str, str]:
    """This environment without a parent torchrun's rank variables."""
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    return {k: v for k, v in os.environ.items() if k not in drop}


def training_processes(spec: RunSpec) -> int:
    """Processes while the training loop runs: each rank and its train-loader workers, plus
    torchrun's agent."""
    return spec.ranks * (1 + spec.workers) + (1 if spec.ranks > 1 else 0)


def run_measured(spec: RunSpec, args: argparse.Namespace) -> dict[str, Any]:
    """Run one fit child under the tree sampler; its numbers, peaks and command."""
    cmd = fit_command(spec, args)
    spec.out.mkdir(parents=True, exist_ok=True)
    log_path = spec.out / "fit.log"
    log.info("%s: %s", spec.name, " ".join(cmd))
    load_before = load_average()
    started = time.monotonic()
    with log_path.open("w") as log_fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=log_fh,
                                stderr=subprocess.STDOUT)
        with TreeSampler(proc.pid, spec.name, report_s=args.report_s,
                         train_processes=training_processes(spec)) as sampler:
            try:
                rc = proc.wait(timeout=args.timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
    wall = time.monotonic() - started
    log.info("%s: exit %d after %.0f s", spec.name, rc, wall)
    result = {"name": spec.name, "command": " ".join(cmd), "returncode": rc,
              "wall_s": round(wall, 1), "ranks": spec.ranks, "workers": spec.workers,
              "image_size": args.image_size,
              "batch_size": spec.batch_size, "load_average_before": load_before,
              "load_average_after": load_average(), "memory": sampler.as_dict(),
              "splits": split_sizes(spec.manifest)}
    if rc != 0:
        result["log_tail"] = log_path.read_text()[-3000:]
        return result
    return result | run_outputs(spec.out)


def split_sizes(manifest: Path) -> dict[str, int]:
    items = json.loads(manifest.read_text())["items"]
    return {s: sum(1 for i in items if i["split"] == s) for s in ("train", "val", "test")}


def run_outputs(out: Path) -> dict[str, Any]:
    """The epoch record (history.json) and the test metrics (metrics.json) of a finished run."""
    history = json.loads((out / "history.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    epoch = history[-1]
    seconds, first = epoch["seconds"], epoch.get("first_batch_wait_s", 0.0)
    data_s = epoch["data_wait_fraction"] * seconds
    steady = (data_s - first) / (seconds - first) if seconds > first else None
    test = metrics.get("test") or {}
    keep = ("n", "accuracy", "rmse", "off_by_one_accuracy")
    return {"epoch": epoch, "epoch_seconds": round(seconds, 1),
            "train_images_per_s": round(epoch["train_images_per_s"], 2),
            "data_wait_fraction": round(epoch["data_wait_fraction"], 4),
            "first_batch_wait_s": round(first, 2),
            "data_wait_fraction_after_first_batch": None if steady is None else round(steady, 4),
            "test": {k: test[k] for k in keep if k in test},
            "baseline_majority": {k: (metrics.get("baseline_majority") or {}).get(k)
                                  for k in ("accuracy", "rmse")},
            "best_val_loss": metrics.get("best_val_loss")}


def scaling_runs(source: Path, rows: list[dict[str, str]], work: Path,
                 args: argparse.Namespace) -> list[dict[str, Any]]:
    """One measured epoch per (size, workers)."""
    results = []
    for size in args.sizes:
        labels = work / f"subset-{size}" / "labels.csv"
        n = write_subset(rows, size, args.seed, labels)
        manifest = work / f"subset-{size}" / "manifest.json"
        prepare(source, labels, manifest, args)
        for workers in args.workers:
            name = f"n{n}-w{workers}" if args.ranks == 1 else f"n{n}-{args.ranks}x{workers}"
            name += "" if args.image_size == 224 else f"-{args.image_size}px"
            spec = RunSpec(name, manifest, work / f"run-{name}", workers, args.batch_size,
                           ranks=args.ranks)
            results.append(run_measured(spec, args) | {"images": n, "kind": "scaling"})
    return results


def torchrun_run(source: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """2 ranks (gloo), one worker per rank, over every labelled image whose count is a class."""
    manifest = work / "all" / "manifest.json"
    prepare(source, None, manifest, args)
    n = sum(split_sizes(manifest).values())
    name = f"torchrun-2x-n{n}" + ("" if args.image_size == 224 else f"-{args.image_size}px")
    spec = RunSpec(name, manifest, work / f"run-{name}", args.torchrun_workers,
                   args.batch_size, ranks=2)
    return run_measured(spec, args) | {"images": n, "kind": "torchrun"}


def merge(previous: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs of an earlier results file, with same-named runs replaced by the new ones."""
    names = {r["name"] for r in new}
    return [r for r in previous if r["name"] not in names] + new


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source-dir", type=Path, default=None,
                   help="extra set (labels.csv + images/); default: $BINAUDIT_EXTRA_DIR, "
                        "data/abid-extra, ../main/data/abid-extra, ../shared/data/abid-extra")
    p.add_argument("--sizes", default="1000,10000", help="comma list of subset sizes ('' none)")
    p.add_argument("--workers", default="2", help="comma list of DataLoader worker counts")
    p.add_argument("--ranks", type=int, default=1, help="torchrun ranks of the size runs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--classes", default="0-10")
    p.add_argument("--val-fraction", type=float, default=0.03)
    p.add_argument("--test-fraction", type=float, default=0.03)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torchrun", action="store_true", help="also the 2-rank run over the set")
    p.add_argument("--torchrun-workers", type=int, default=1)
    p.add_argument("--timeout-s", type=float, default=3600.0, help="per child run")
    p.add_argument("--report-s", type=float, default=30.0, help="progress line interval")
    p.add_argument("--append", action="store_true",
                   help="keep the runs of an existing results file (same names replaced)")
    p.add_argument("--rewrite-report", action="store_true",
                   help="only rewrite <out>/data-scaling.md from its .json (no runs)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder")
    args = p.parse_args(argv)
    args.sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    args.workers = [int(x) for x in args.workers.split(",") if x.strip()]
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.rewrite_report:
        results = json.loads((args.out / "data-scaling.json").read_text())
        for path in write_results(results, args.out):
            log.info("wrote %s", path)
        return
    source = args.source_dir or default_source()
    if source is None:
        sys.exit("no extra set found: pass --source-dir (a folder with labels.csv + images/)")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="binaudit-data-scaling-"))
    rows = labelled_rows(source, parse_classes(args.classes))
    log.info("%d labelled images with counts %s in %s; work dir %s", len(rows), args.classes,
             source, work)
    machine = machine_info("cpu")
    runs = scaling_runs(source, rows, work, args)
    if args.torchrun:
        runs.append(torchrun_run(source, work, args))
    json_path = args.out / "data-scaling.json"
    if args.append and json_path.is_file():
        runs = merge(json.loads(json_path.read_text())["runs"], runs)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results = {"machine": machine, "load_average_at_end": load_average(), "source": str(source),
               "labelled_images": len(rows), "settings": settings, "runs": runs,
               "work_dir": str(work)}
    for path in write_results(results, args.out):
        log.info("wrote %s", path)
    if args.work_dir is None and not os.environ.get("BINAUDIT_KEEP_WORK"):
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
