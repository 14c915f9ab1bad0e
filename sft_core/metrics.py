"""Metrics on generated text: built-ins by name, user functions, and checked aggregation.

A metric has trlX's signature: ``f(samples=, prompts=, outputs=, **metadata) -> {name: list | float}``.
``samples`` are prompt+output strings; ``metadata`` holds per-prompt fields of dict eval prompts
(e.g. ``reference``), each a list aligned with ``outputs``. Lists are averaged before logging.
"""

from __future__ import annotations

import importlib
import logging
import math
from typing import Any, Callable, Sequence

from sft_core.config import DEFAULT_METRIC_MODULE_PREFIXES, SFTConfig
from sft_core.errors import MetricError

logger = logging.getLogger(__name__)

MetricFn = Callable[..., dict[str, Any]]


def _references(metadata: dict[str, list[Any]]) -> list[str] | None:
    for key in ("reference", "references", "completion"):
        if key in metadata:
            return [str(r) for r in metadata[key]]
    return None


def exact_match(samples: Sequence[str], prompts: Sequence[str], outputs: Sequence[str], **metadata) -> dict[str, Any]:
    refs = _references(metadata)
    if refs is None:
        return {}  # no references to compare against; evaluate() warns once
    return {"exact_match": [float(o.strip() == r.strip()) for o, r in zip(outputs, refs, strict=True)]}


def length(samples: Sequence[str], prompts: Sequence[str], outputs: Sequence[str], **metadata) -> dict[str, Any]:
    return {"length": [float(len(o)) for o in outputs]}


def distinct_n(samples: Sequence[str], prompts: Sequence[str], outputs: Sequence[str], **metadata) -> dict[str, Any]:
    """Distinct unigrams and bigrams over all outputs, divided by their totals (diversity)."""
    result = {}
    for n in (1, 2):
        grams = [tuple(words[i : i + n]) for o in outputs for words in [o.split()] for i in range(len(words) - n + 1)]
        result[f"distinct_{n}"] = len(set(grams)) / len(grams) if grams else 0.0
    return result


def rouge(samples: Sequence[str], prompts: Sequence[str], outputs: Sequence[str], **metadata) -> dict[str, Any]:
    refs = _references(metadata)
    if refs is None:
        return {}
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise MetricError("the 'rouge' metric needs the rouge-score package: pip install rouge-score") from None
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return {"rougeL": [scorer.score(r, o)["rougeL"].fmeasure for o, r in zip(outputs, refs, strict=True)]}


BUILTIN_METRICS: dict[str, MetricFn] = {
    "exact_match": exact_match, "length": length, "distinct_n": distinct_n, "rouge": rouge,
}


def resolve_metric(ref: str, allowed_prefixes: Sequence[str] = DEFAULT_METRIC_MODULE_PREFIXES) -> MetricFn:
    """A built-in name, or 'package.module:function' from a module under ``allowed_prefixes``
    (method.metric_module_prefixes)."""
    if ref in BUILTIN_METRICS:
        return BUILTIN_METRICS[ref]
    module_name, sep, attr = ref.partition(":")
    if not sep:
        raise MetricError(f"method.metrics: unknown metric {ref!r}; built-ins are {', '.join(BUILTIN_METRICS)}, "
                          "or give 'module:function'")
    if not any(module_name == p.rstrip(".") or module_name.startswith(p) for p in allowed_prefixes):
        raise MetricError(f"method.metrics: {ref!r} is outside the allowed module prefixes "
                          f"{list(allowed_prefixes)}; add its prefix to method.metric_module_prefixes to allow it")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise MetricError(f"method.metrics: cannot import {module_name!r} for metric {ref!r}: {err}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise MetricError(f"method.metrics: {module_name!r} has no function {attr!r}")
    return fn


def resolve_metrics(method: SFTConfig) -> list[MetricFn]:
    """``method.metrics`` as functions: a typo fails here, in seconds, not after an hour of training."""
    return [resolve_metric(ref, method.metric_module_prefixes) for ref in method.metrics]


def compute_metrics(
    metric_fns: Sequence[MetricFn], *, samples: list[str], prompts: list[str], outputs: list[str],
    metadata: dict[str, list[Any]],
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Run every metric; return (means, per-sample columns). Bad returns raise MetricError."""
    means: dict[str, float] = {}
    columns: dict[str, list[float]] = {}
    for fn in metric_fns:
        name = getattr(fn, "__name__", repr(fn))
        try:
            result = fn(samples=samples, prompts=prompts, outputs=outputs, **metadata)
        except MetricError:
            raise
        except Exception as err:
            raise MetricError(f"metric {name!r} raised {type(err).__name__}: {err}") from err
        if not isinstance(result, dict):
            raise MetricError(f"metric {name!r} must return a dict of name -> list or float, "
                              f"got {type(result).__name__}")
        for key, value in result.items():
            means[key] = _mean_checked(name, key, value, len(outputs))
            if isinstance(value, (list, tuple)):
                columns[key] = [float(v) for v in value]
    return means, columns


def _mean_checked(fn_name: str, key: str, value: Any, n: int) -> float:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise MetricError(f"metric {fn_name!r} returned {len(value)} values for {key!r}, expected one per "
                              f"output ({n})")
        values = value
    else:
        values = [value]
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        raise MetricError(f"metric {fn_name!r} returned non-numeric values for {key!r}") from None
    bad = [i for i, v in enumerate(floats) if not math.isfinite(v)]
    if bad:
        raise MetricError(f"metric {fn_name!r} returned a non-finite value for {key!r} at index {bad[0]}")
    return sum(floats) / len(floats) if floats else 0.0
