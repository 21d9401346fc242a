"""Per-stage busy time read back from a pipeline's Prometheus registry
(``binaudit_stage_seconds`` and ``binaudit_batch_size``, see ``inference.metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

STAGES = ("fetch", "decode", "infer")


def stage_seconds(registry: CollectorRegistry) -> dict[str, dict[str, float]]:
    """Per stage: total seconds, observations and mean milliseconds."""
    out = {}
    for stage in STAGES:
        total = registry.get_sample_value("binaudit_stage_seconds_sum", {"stage": stage}) or 0.0
        count = registry.get_sample_value("binaudit_stage_seconds_count", {"stage": stage}) or 0
        out[stage] = {"sum_s": round(total, 3), "count": int(count),
                      "mean_ms": round(1000 * total / count, 2) if count else 0.0}
    return out


def mean_batch(registry: CollectorRegistry) -> float:
    total = registry.get_sample_value("binaudit_batch_size_sum") or 0.0
    count = registry.get_sample_value("binaudit_batch_size_count") or 0.0
    return round(total / count, 2) if count else 0.0
