"""``bench/results/data-scaling.{json,md}``: the tables and the two claims of bench.data_scaling."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

DATA_WAIT_TARGET = 0.10
FLAT_RATIO = 1.10  # peak memory at 10x the images may be at most 10 % higher to count as flat
EVAL_NOTE = ("The larger run's peak came after its training loop, in the validation/test "
             "passes: their batches (64 per rank) are full only once a rank's shard has 64 "
             "images (a 1,000-image run's 3 % splits hold 32, 16 per rank with 2), and the three "
             "loaders' "
             "persistent workers are all alive then; bounded by the eval batch size, not the "
             "dataset.")


def _f(x: Any, digits: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1%}"


def memory_claims(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (ranks, workers): smallest vs largest dataset, peak tree PSS / RSS sum, ratios."""
    groups: dict[tuple[int, int, int], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        if run["returncode"] == 0:
            groups[(run["ranks"], run["workers"], run.get("image_size", 224))].append(run)
    claims = []
    for (ranks, workers, size), group in sorted(groups.items()):
        if len(group) < 2:
            continue
        small, large = min(group, key=lambda r: r["images"]), max(group, key=lambda r: r["images"])
        ms, ml = small["memory"], large["memory"]
        pss = ml["peak_tree_pss_mib"] / ms["peak_tree_pss_mib"]
        rss = ml["peak_tree_rss_sum_mib"] / ms["peak_tree_rss_sum_mib"]
        loop_s, loop_l = _loop_peak(ms), _loop_peak(ml)
        med_s, med_l = loop_median(small), loop_median(large)
        loop = loop_l / loop_s if loop_s and loop_l else None
        claims.append({"ranks": ranks, "workers": workers, "image_size": size,
                       "small": small["images"], "large": large["images"],
                       "pss_small_mib": ms["peak_tree_pss_mib"],
                       "pss_large_mib": ml["peak_tree_pss_mib"], "pss_ratio": round(pss, 3),
                       "rss_small_mib": ms["peak_tree_rss_sum_mib"],
                       "rss_large_mib": ml["peak_tree_rss_sum_mib"], "rss_ratio": round(rss, 3),
                       "loop_small_mib": loop_s, "loop_large_mib": loop_l,
                       "loop_ratio": None if loop is None else round(loop, 3),
                       "peak_after_loop": _peak_outside_loop(ml),
                       "loop_median_small_mib": med_s, "loop_median_large_mib": med_l,
                       "loop_median_ratio": round(med_l / med_s, 3) if med_s and med_l else None,
                       "added_mib_per_1000_images": round(
                           1000 * ((loop_l or 0) - (loop_s or 0))
                           / (large["images"] - small["images"]), 1),
                       "flat": (loop if loop is not None else pss) <= FLAT_RATIO})
    return claims


def loop_median(run: dict[str, Any]) -> float | None:
    """Median tree PSS over the training loop's kept samples (one every 5 s): robust to the
    moments when both ranks' forward passes peak together, which the max catches more often
    in a longer run."""
    count = run["ranks"] * (1 + run["workers"]) + (1 if run["ranks"] > 1 else 0)
    values: list[float] = []
    for sample in run["memory"]["timeline"]:
        if sample["processes"] > count and values:
            break
        if sample["processes"] == count:
            values.append(sample["pss_mib"])
    return round(statistics.median(values), 1) if values else None


def _peak_outside_loop(memory: dict[str, Any]) -> bool:
    """Whether the run's peak came outside its training loop (start-up, validation, test)."""
    window = memory.get("training_window")
    if not window:
        return False
    loop = max(window["peak_pss_first_third_mib"], window["peak_pss_last_third_mib"],
               window.get("peak_pss_mib", 0.0))
    return bool(memory["peak_tree_pss_mib"] > loop)


def cache_mib(claim: dict[str, Any]) -> float:
    """What the old trainer's cache (every decoded uint8 image on every rank) would add."""
    per_image = 3 * claim["image_size"] ** 2
    return (claim["large"] - claim["small"]) * per_image * claim["ranks"] / 2**20


def _loop_peak(memory: dict[str, Any]) -> float | None:
    """Peak tree PSS over the last third of the training loop (steady state, full batches)."""
    window = memory.get("training_window")
    return window["peak_pss_last_third_mib"] if window else None


def window_claims(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each finished run: peak tree PSS in the first vs the last third of its training loop."""
    out = []
    for r in runs:
        window = r["memory"].get("training_window")
        if r["returncode"] == 0 and window:
            ratio = window["last_over_first"]
            out.append({"name": r["name"], **window,
                        "flat": ratio is not None and ratio <= FLAT_RATIO})
    return out


def data_wait_claims(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each finished run: is the data-wait share of the epoch under the target?"""
    return [{"name": r["name"], "fraction": r["data_wait_fraction"],
             "after_first_batch": r.get("data_wait_fraction_after_first_batch"),
             "under_target": r["data_wait_fraction"] < DATA_WAIT_TARGET}
            for r in runs if r["returncode"] == 0]


def _machine_lines(results: dict[str, Any]) -> list[str]:
    m = results["machine"]
    return [
        "## Machine", "",
        f"- host `{m['host']}`, {m['cpu_model']}, {m['cores']} usable cores, "
        f"{m['memory_gib']} GiB RAM, no GPU used (`--device cpu`)",
        f"- torch {m['torch']}, torchvision {m['torchvision']}, Python {m['python']}, "
        f"{m['torch_threads']} torch threads in the parent",
        f"- started {m['date_utc']}; 1/5/15-min load average at start "
        f"{m['load_average_at_start']}, at end {results['load_average_at_end']}",
        "- **The CPU was shared**: other engineers' jobs (tests, training, benchmarks) ran on "
        "the same 2 cores during these runs (see each run's load average). Times and rates are "
        "therefore pessimistic and noisy; memory peaks are not affected by load.", "",
    ]


def _scaling_table(runs: list[dict[str, Any]]) -> list[str]:
    head = ("| run | images (train/val/test) | px | ranks×workers | epoch s | wall s | "
            "train img/s | data wait | after 1st batch | 1st batch s | peak tree PSS MiB | "
            "peak RSS sum MiB | peak parent RSS MiB | processes | load avg before → after |")
    lines = [head, "|" + "---|" * 15]
    for r in runs:
        s, m = r["splits"], r["memory"]
        lines.append(
            f"| {r['name']} | {s['train']:,}/{s['val']:,}/{s['test']:,} | "
            f"{r.get('image_size', 224)} | "
            f"{r['ranks']}×{r['workers']} | {_f(r.get('epoch_seconds'))} | {_f(r['wall_s'])} | "
            f"{_f(r.get('train_images_per_s'))} | {_pct(r.get('data_wait_fraction'))} | "
            f"{_pct(r.get('data_wait_fraction_after_first_batch'))} | "
            f"{_f(r.get('first_batch_wait_s'))} | {_f(m['peak_tree_pss_mib'])} | "
            f"{_f(m['peak_tree_rss_sum_mib'])} | {_f(m['peak_parent_rss_mib'])} | "
            f"{m['max_processes']} | {r['load_average_before'][0]} → "
            f"{r['load_average_after'][0]} |")
    return lines


def _claim_lines(runs: list[dict[str, Any]]) -> list[str]:
    lines = ["## Claims", ""]
    for c in memory_claims(runs):
        verdict = "flat" if c["flat"] else "GROWS"
        if c["loop_ratio"] is not None:
            lines.append(
                f"- **Training loop vs dataset size ({c['ranks']} rank(s) × {c['workers']} "
                f"workers, {c['image_size']} px): {verdict}.** Peak tree PSS over the last "
                f"third of the loop: {c['loop_small_mib']:,.0f} MiB at {c['small']:,} images, "
                f"{c['loop_large_mib']:,.0f} MiB at {c['large']:,} (×{c['loop_ratio']:.3f}, "
                f"{c['added_mib_per_1000_images']:+,.0f} MiB per 1,000 more images); median "
                f"over the loop {_f(c['loop_median_small_mib'], 0)} → "
                f"{_f(c['loop_median_large_mib'], 0)} MiB (×{c['loop_median_ratio']}). A cache "
                f"of decoded uint8 images would add {cache_mib(c):,.0f} MiB.")
        elif c["loop_median_ratio"] is not None:
            lines.append(
                f"- Training loop ({c['ranks']} rank(s) × {c['workers']} workers, "
                f"{c['image_size']} px): median tree PSS over the loop "
                f"{_f(c['loop_median_small_mib'], 0)} MiB at {c['small']:,} images, "
                f"{_f(c['loop_median_large_mib'], 0)} MiB at {c['large']:,} "
                f"(×{c['loop_median_ratio']}); a cache of decoded uint8 images would add "
                f"{cache_mib(c):,.0f} MiB.")
        lines.append(
            f"- Whole run ({c['ranks']} rank(s) × {c['workers']} workers, "
            f"{c['image_size']} px), including validation and test: "
            f"{c['small']:,} images: tree PSS {c['pss_small_mib']:,.0f} MiB (RSS sum "
            f"{c['rss_small_mib']:,.0f}); {c['large']:,} images: {c['pss_large_mib']:,.0f} MiB "
            f"(RSS sum {c['rss_large_mib']:,.0f}); ratio {c['pss_ratio']:.3f} PSS, "
            f"{c['rss_ratio']:.3f} RSS sum (flat = ≤ {FLAT_RATIO})." + (
                f" {EVAL_NOTE}" if c["pss_ratio"] > FLAT_RATIO and c["peak_after_loop"] else ""))
    for w in window_claims(runs):
        verdict = "flat" if w["flat"] else "GROWS"
        lines.append(
            f"- {w['name']}, within the epoch: {verdict}. Peak tree PSS "
            f"{w['peak_pss_first_third_mib']:,.0f} MiB in the first third of the training loop,"
            f" {w['peak_pss_last_third_mib']:,.0f} MiB in the last third (×"
            f"{w['last_over_first']}; {w['seconds']:,.0f} s, {w['samples']} samples).")
    for c in data_wait_claims(runs):
        mark = "under" if c["under_target"] else "**over**"
        lines.append(f"- {c['name']}: data wait {_pct(c['fraction'])} of the epoch "
                     f"({_pct(c['after_first_batch'])} after the first batch), {mark} the "
                     f"{DATA_WAIT_TARGET:.0%} target.")
    return lines + [""]


def _torchrun_lines(results: dict[str, Any]) -> list[str]:
    runs, st = results["runs"], results["settings"]
    prepare = (f"binaudit train prepare --source-dir {results['source']} --classes "
               f"{st['classes']} --seed {st['seed']} --val-fraction {st['val_fraction']} "
               f"--test-fraction {st['test_fraction']} --out <manifest>")
    lines: list[str] = []
    for r in (r for r in runs if r["kind"] == "torchrun"):
        t, b = r.get("test", {}), r.get("baseline_majority", {})
        lines += [
            f"## 2-rank torchrun over the extra set ({r['images']:,} images, "
            f"{r.get('image_size', 224)} px)", "",
            f"    {prepare}", f"    {r['command']}", "",
            f"- exit code {r['returncode']}, wall time {r['wall_s']:,.0f} s (whole command: "
            f"start-up, one epoch, validation, test, artifact), epoch {_f(r.get('epoch_seconds'))}"
            f" s, {_f(r.get('train_images_per_s'))} train img/s (both ranks together)",
            f"- data wait {_pct(r.get('data_wait_fraction'))} of the epoch; peak tree PSS "
            f"{_f(r['memory']['peak_tree_pss_mib'])} MiB over {r['memory']['max_processes']} "
            "processes (torchrun agent, 2 ranks, their DataLoader workers)",
            f"- final metrics: best val loss {_f(r.get('best_val_loss'), 4)}; test (n = "
            f"{t.get('n', '–')}): accuracy {_f(t.get('accuracy'), 3)}, RMSE "
            f"{_f(t.get('rmse'), 3)}, off-by-one {_f(t.get('off_by_one_accuracy'), 3)}; "
            f"majority baseline accuracy {_f(b.get('accuracy'), 3)}, RMSE "
            f"{_f(b.get('rmse'), 3)}", "",
        ]
        if r["returncode"] != 0:
            lines += ["```", r.get("log_tail", ""), "```", ""]
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The results page: claims first, then the runs, the torchrun run and the machine."""
    runs = results["runs"]
    s = results["settings"]
    lines = [
        "# Trainer data loading: memory and data wait vs dataset size", "",
        "One epoch of `binaudit train fit` (frozen EfficientNet-Lite0 at the run's px, "
        f"batch {s['batch_size']}, classes {s['classes']}, CPU) on nested seeded subsets of "
        f"the extra set ({results['labelled_images']:,} labelled images with a count in "
        f"{s['classes']} in `{results['source']}`), val/test {s['val_fraction']:.0%}/"
        f"{s['test_fraction']:.0%}. Memory is summed over the whole process tree (parent + "
        "DataLoader workers, sampled from /proc every 0.25 s): PSS counts pages shared between "
        "the parent and its forked workers once; the RSS sum counts them once per process.", "",
        *_claim_lines(runs), "## Runs", "", *_scaling_table(runs), "",
        "Data wait = time the training loop waited for the next batch / epoch time (from "
        "`history.json`); the first batch also waits for the workers to start.", "",
        *_torchrun_lines(results), *_machine_lines(results),
        "## Reproduce", "",
        "    python -m bench.data_scaling --torchrun       # = make bench-data-scaling: 1,000 "
        "and 10,000 images, 1 process x 2 workers, + the 2-rank torchrun (224 px)",
        "    python -m bench.data_scaling --sizes 1000 --ranks 2 --workers 1 --append",
        "    python -m bench.data_scaling --sizes 1000 --ranks 2 --workers 1 --torchrun "
        "--image-size 160 --append", "",
        "Each run's exact `train fit` command is in the JSON (`runs[].command`).", "",
    ]
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], out: Path) -> list[Path]:
    """``data-scaling.json`` (raw + claims) and ``data-scaling.md``."""
    out.mkdir(parents=True, exist_ok=True)
    runs = results["runs"]
    results = results | {"claims": {"memory": memory_claims(runs),
                                    "within_epoch": window_claims(runs),
                                    "data_wait": data_wait_claims(runs)}}
    paths = [out / "data-scaling.json", out / "data-scaling.md"]
    paths[0].write_text(json.dumps(results, indent=1, default=str) + "\n")
    paths[1].write_text(markdown(results))
    return paths
