"""Whole-network training speed of the counter at 1 and 2 torch threads, per input size.

Random uint8 batches through the `train whole` step (normalise, Lite0 forward, soft-label
loss, AdamW, EMA update); the first steps are warm-up. Writes
``bench/results/train-threads.json`` with the machine, the load average at start and end, and
whether the machine was busy (load > 1.5 on 2 cores: the result is then not used).

    python -m bench.train_threads [--steps 6] [--sizes 160,224] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from trainer import compare
from trainer.tail import soft_label_loss
from trainer.whole import WholeConfig, build, to_input

log = logging.getLogger("bench.train_threads")


def images_per_s(size: int, threads: int, steps: int, batch: int,
                 architecture: str = "efficientnet_lite0") -> float:
    torch.set_num_threads(threads)
    cfg = WholeConfig(batch_size=batch, sizes=(size,), architecture=architecture)
    model, ema, opt, _ = build(cfg, total_steps=steps + 2, weights="default")
    model.train()
    gen = np.random.default_rng(0)
    images = torch.from_numpy(gen.integers(0, 256, (batch, 3, size, size), dtype=np.uint8))
    y = torch.from_numpy(gen.integers(0, cfg.classes, batch))
    timings = []
    for step in range(steps + 2):
        start = time.perf_counter()
        loss = soft_label_loss(model(to_input(images, size)), y, cfg.sigma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update_parameters(model)
        if step >= 2:  # warm-up: allocator and oneDNN primitive caches
            timings.append(time.perf_counter() - start)
    return batch / float(np.median(timings))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--sizes", default="160,224")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--others", default="efficientnet_lite1,efficientnet_lite2",
                        help="Architectures also timed (2 threads, the last size only).")
    parser.add_argument("--out", type=Path, default=Path("bench/results/train-threads.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    start_load = compare.load_average()
    rows = []
    sizes = [int(s) for s in args.sizes.split(",")]
    batch = args.batch_size
    runs = [("efficientnet_lite0", size, threads, batch) for size in sizes for threads in (1, 2)]
    runs.append(("efficientnet_lite0", sizes[-1], 2, 2 * batch))  # is a bigger batch faster?
    runs += [(arch, sizes[-1], 2, batch) for arch in args.others.split(",") if arch]
    for arch, size, threads, b in runs:
        rate = images_per_s(size, threads, args.steps, b, arch)
        log.info("%s, %d px, batch %d, %d thread(s): %.1f img/s", arch, size, b, threads, rate)
        rows.append({"architecture": arch, "size": size, "threads": threads, "batch_size": b,
                     "images_per_s": rate})
    end_load = compare.load_average()
    result = {"rows": rows, "batch_size": args.batch_size, "steps": args.steps,
              "machine": compare.machine(), "load_start": start_load, "load_end": end_load,
              "busy": max(start_load, end_load) > compare.BUSY_LOAD}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    log.info("written to %s", args.out)


if __name__ == "__main__":
    main()
