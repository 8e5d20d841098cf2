"""Figures from a driver's samples: percentiles, rates, and the summary of a phase."""

from __future__ import annotations

import math
from typing import Any

from bench.calls import FUNCTION_STEPS, SEND, SWML, VERIFY, VERIFY_RIGHT, VERIFY_WRONG, LoopResult


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (``nan`` when empty)."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def latency(samples: list[float], within: float | None = None) -> dict[str, Any]:
    ordered = sorted(samples)
    figures: dict[str, Any] = {
        "count": len(ordered),
        "p50_ms": round(percentile(ordered, 0.50) * 1000, 2),
        "p90_ms": round(percentile(ordered, 0.90) * 1000, 2),
        "p99_ms": round(percentile(ordered, 0.99) * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2) if ordered else math.nan,
        "mean_ms": round(sum(ordered) / len(ordered) * 1000, 2) if ordered else math.nan,
    }
    if within is not None:
        figures[f"within_{within:g}s"] = sum(1 for value in ordered if value <= within)
    return figures


def summarize(result: LoopResult, *, within: float | None = None) -> dict[str, Any]:
    """Latency by step and by function, function requests per second, failures and CPU."""
    samples = result.recorder.samples
    by_step = {step: latency(samples.get(step, []), within) for step in (SWML, *FUNCTION_STEPS)}
    by_function = {
        SEND: by_step[SEND],
        VERIFY: latency(samples.get(VERIFY_WRONG, []) + samples.get(VERIFY_RIGHT, []), within),
    }
    answered = sum(len(samples.get(step, [])) for step in FUNCTION_STEPS)
    failures = [
        {"step": step, "kind": kind, "count": count}
        for (step, kind), count in sorted(result.recorder.failures.items())
    ]
    failed = sum(item["count"] for item in failures if item["step"] in FUNCTION_STEPS)
    summary: dict[str, Any] = {
        "seconds": round(result.seconds, 2),
        "function_requests": answered,
        "function_requests_per_s": round(answered / result.seconds, 1) if result.seconds else 0.0,
        "swml_per_s": round(len(samples.get(SWML, [])) / result.seconds, 1) if result.seconds else 0.0,
        "calls_started": result.calls_started,
        "calls_verified": result.calls_ok,
        "calls_failed": result.calls_failed,
        "function_requests_failed": failed,
        "failures": failures,
        "by_function": by_function,
        "by_step": by_step,
        "max_start_lag_ms": round(result.max_start_lag * 1000, 1),
        "response_bytes": result.recorder.response_bytes,
    }
    if within is not None:
        summary[f"answered_within_{within:g}s"] = sum(
            by_step[step][f"within_{within:g}s"] for step in FUNCTION_STEPS
        )
        summary["function_requests_sent"] = answered + failed
        summary[f"slower_than_{within:g}s"] = result.recorder.slow[:200]
    cpu = result.cpu_seconds
    if cpu and result.seconds:
        summary["cpu_cores_used"] = {name: round(value / result.seconds, 3) for name, value in cpu.items()}
        calls = len(samples.get(SWML, []))
        if calls:
            # A noisy neighbour slows the agent down, but hardly changes what a call costs it.
            summary["agent_cpu_ms_per_call"] = round(cpu["agent"] / calls * 1000, 3)
        if answered:
            summary["agent_cpu_ms_per_function_request"] = round(cpu["agent"] / answered * 1000, 3)
    return summary
