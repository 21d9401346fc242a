"""``bench/gpu.sh``: the CUDA benchmarks in one bounded run (under 9 minutes on an H200).

No services and no network: the model, decode and in-process pipeline only. Order puts what
the targets need first and spends what is left of the budget on torch.compile:

1. model alone (child, one CUDA context): bf16+channels_last over batch 1..256 on the bare
   forward and on the worker's ``Counter.infer`` path; fp32, channels_last and bf16 at a few
   sizes; CUDA graphs at the large sizes;
2. preprocessing: CPU per core, and batched nvJPEG decode (``decode_jpeg(list, device=cuda)``);
3. the in-process pipeline (``InferencePipeline`` fed with image bytes) at the worker's batch
   size and at the best one, vs model alone and vs the per-event pattern;
4. inference backends (the worker's autotuning candidates) on ``BinCounter.infer``, windows
   interleaved: torch-tensorrt (fp16), ONNX Runtime's TensorRT (fp16) and CUDA execution
   providers, torch.compile (inductor, bf16, static batch), eager bf16+channels_last; one
   that cannot run here (package missing) is a row with its reason;
5. torch.compile ``reduce-overhead`` then ``max-autotune-no-cudagraphs`` at the best batch
   size, each in a child killed at its time limit.

``--device cpu --quick`` runs the same code paths on CPU with tiny sizes (a smoke test of the
script where no GPU is available); without ``--device cpu`` a missing GPU is an error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.env import load_average, machine_info, usable_cores

log = logging.getLogger("bench.gpu")

NEEDED = ("torch", "torchvision", "PIL", "pydantic", "pydantic_settings", "numpy",
          "prometheus_client", "botocore", "aiobotocore", "matplotlib")
EXIT_NO_CUDA, EXIT_MISSING = 2, 3
# The worker's CUDA autotuning candidates (inference/backends/registry.py), eager last.
GPU_BACKENDS = ("tensorrt", "onnxruntime-tensorrt", "onnxruntime-cuda", "compiled", "eager")


def preflight(device: str) -> list[str]:
    """Modules that are missing; exits at once if CUDA was asked for and is absent."""
    missing = []
    for name in NEEDED:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if "torch" in missing:
        sys.exit(f"bench/gpu.sh: torch is not importable with {sys.executable}; set PYTHON "
                 "to an interpreter that has torch (nothing is installed from the network)")
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        print(f"bench/gpu.sh: CUDA is not available (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda}); nothing measured. Use --device cpu --quick for a smoke "
              "test of the script.", file=sys.stderr)
        sys.exit(EXIT_NO_CUDA)
    return missing


def plan(device: str, quick: bool) -> dict[str, Any]:
    if device == "cuda" and not quick:
        return {"sweep": [1, 2, 4, 8, 16, 32, 64, 128, 256], "few": [16, 64, 256],
                "graph": [64, 128, 256], "counter": [1, 16, 64, 128, 256],
                "repeats": 3, "min_seconds": 0.5, "decode_bs": [64, 128, 256],
                "local_seconds": 6.0, "per_event": 300, "arch": "efficientnet_b4",
                "side": 224, "variants": ["fp32", "channels_last", "bf16"],
                "main": "bf16+cl", "graph_variant": "bf16+cl+cuda-graph",
                "backends": list(GPU_BACKENDS), "backend_bs": [16, 128]}
    if device == "cuda":
        return {"sweep": [1, 64, 256], "few": [64], "graph": [64], "counter": [64],
                "repeats": 1, "min_seconds": 0.2, "decode_bs": [64], "local_seconds": 1.0,
                "per_event": 50, "arch": "efficientnet_b4", "side": 224,
                "variants": ["bf16"], "main": "bf16+cl", "graph_variant": "bf16+cl+cuda-graph",
                "backends": list(GPU_BACKENDS), "backend_bs": [64]}
    # CPU smoke test of the script: tiny model, CUDA-only variants mapped to their CPU twins.
    return {"sweep": [1, 4], "few": [4], "graph": [], "counter": [1, 4], "repeats": 1,
            "min_seconds": 0.1, "decode_bs": [], "local_seconds": 1.0, "per_event": 10,
            "arch": "efficientnet_lite0", "side": 96, "variants": ["fp32"],
            "main": "channels_last", "graph_variant": None,
            "backends": ["onnxruntime", "openvino", "eager"], "backend_bs": [1, 4]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.models import write_artifact
    from bench.orchestrate import ChildRunner

    device = args.device
    p = plan(device, args.quick)
    work = Path(tempfile.mkdtemp(prefix="binaudit-gpu-bench-"))
    out = Path(args.out)
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    runner = ChildRunner(log_dir, deadline=time.monotonic() + args.budget_s)
    artifact = write_artifact(work, p["arch"], p["side"], tag="gpu")
    base = {"device": device, "artifact": str(artifact), "repeats": p["repeats"],
            "min_seconds": p["min_seconds"]}
    sections: dict[str, Any] = {}
    # 1. model alone -----------------------------------------------------------------------
    runs = [{"variant": p["main"], "path": "forward", "batch_sizes": p["sweep"]},
            {"variant": p["main"], "path": "counter", "batch_sizes": p["counter"]}]
    runs += [{"variant": v, "path": "forward", "batch_sizes": p["few"]} for v in p["variants"]]
    if device == "cuda":
        runs.append({"variant": "bf16", "path": "counter", "batch_sizes": p["few"]})
    if p["graph_variant"]:
        runs.append({"variant": p["graph_variant"], "path": "forward",
                     "batch_sizes": p["graph"]})
    sections["model"] = runner.run("model", {**base, "runs": runs}, timeout=200)
    best_fwd, best_ctr = _best_batch(sections["model"], "forward"), \
        _best_batch(sections["model"], "counter")
    # 2. preprocessing -----------------------------------------------------------------------
    sections["decode"] = runner.run("decode", {**base, "decode_batch_sizes": p["decode_bs"]},
                                    timeout=90)
    # 3. in-process pipeline -----------------------------------------------------------------
    workers = args.decode_workers or usable_cores()
    sizes = sorted({args.worker_batch_size, best_ctr or args.worker_batch_size})
    sections["local"] = runner.run("local", {
        **base, "local_batch_sizes": sizes, "decode_workers": workers,
        "target_seconds": p["local_seconds"], "min_events": 100, "max_events": 40_000,
        "baseline_max_events": p["per_event"]}, timeout=180)
    # 4. inference backends (TensorRT engine builds take minutes: bounded) ---------------------
    sections["backends"] = runner.run("backends", {
        **base, "backends": p["backends"], "sweep_batch_sizes": p["backend_bs"],
        "cache_dir": str(work / "inference-cache")},
        timeout=min(args.backends_timeout, runner.remaining() - 10))
    # 5. torch.compile with what is left ----------------------------------------------------
    if not args.skip_compile:
        bs = best_fwd or p["few"][-1]
        for mode in ("reduce-overhead", "max-autotune-no-cudagraphs"):
            left = runner.remaining()
            sections[f"compile-{mode}"] = runner.run("model", {**base, "runs": [{
                "variant": f"{p['main']}+compile-{mode}", "path": "forward",
                "batch_sizes": [bs]}]}, timeout=min(args.compile_timeout, left - 10))
    return {"sections": sections, "worker_batch_size": args.worker_batch_size,
            "logs": str(log_dir), "plan": p, "decode_workers": workers}


def _best_batch(section: dict[str, Any], path: str) -> int | None:
    rows = [r for r in section.get("rows", []) if r["path"] == path and "images_per_s" in r]
    if not rows:
        return None
    return int(max(rows, key=lambda r: r["images_per_s"]["median"])["batch_size"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=os.environ.get("OUT") or
                   str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--budget-s", type=float, default=480,
                   help="wall-clock budget for all measurements (children are cut at it)")
    p.add_argument("--compile-timeout", type=float, default=150)
    p.add_argument("--skip-compile", action="store_true")
    p.add_argument("--backends-timeout", type=float, default=240)
    p.add_argument("--worker-batch-size", type=int, default=16,
                   help="the worker's configured batch size (settings default 16)")
    p.add_argument("--decode-workers", type=int, help="pipeline decode threads (default: cores)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    missing = preflight(args.device)
    if missing:
        log.warning("missing modules %s: sections that import them will report an error "
                    "(install the project's wheels offline: pip install --no-index "
                    "--find-links <wheelhouse> -e .)", missing)
    started = time.monotonic()
    info = machine_info(args.device)
    import torch

    info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    info["missing_modules"] = missing
    results = run(args)
    info["load_average_at_end"] = load_average()
    results.update(machine=info, profile="quick" if args.quick else "full",
                   command="bench/gpu.sh " + " ".join(sys.argv[1:] if argv is None else argv),
                   total_s=round(time.monotonic() - started, 1))
    from bench.report import write_all

    stem = f"{socket.gethostname()}-{'cuda' if args.device == 'cuda' else 'cpu-gpu-smoke'}"
    paths = write_all(results, Path(args.out), stem)
    log.info("wrote %s in %.0fs", ", ".join(map(str, paths)), time.monotonic() - started)
    failed = [k for k, v in results["sections"].items() if isinstance(v, dict) and "error" in v]
    if failed:
        log.warning("sections that did not complete: %s", failed)
    sys.exit(EXIT_MISSING if missing else 0)


if __name__ == "__main__":
    main()
