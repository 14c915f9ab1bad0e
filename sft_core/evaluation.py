"""Evaluation: held-out loss, and generation from eval prompts scored by metric functions.

Work is split across processes (each takes a contiguous slice); outputs are gathered in order and
metrics are computed once, on the main process, then shared, so every rank agrees on "best".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object
from datasets import Dataset

from sft_core.config import SFTConfig
from sft_core.data.batching import collate, contiguous_slice, pack
from sft_core.data.formats import prompt_segments
from sft_core.data.prepare import encode_prompt
from sft_core.errors import ConfigError, DataError
from sft_core.generation import generate_texts, sweep
from sft_core.losses import token_loss_sum
from sft_core.metrics import MetricFn, compute_metrics

logger = logging.getLogger(__name__)


@dataclass
class EvalPrompts:
    texts: list[str]  # the prompt as the model sees it (chat prompts rendered)
    ids: list[list[int]]
    metadata: dict[str, list[Any]]  # per-prompt fields of dict prompts, e.g. "reference"


@dataclass
class EvalResult:
    step: int
    metrics: dict[str, float] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)  # prompt, output, metadata, per-sample scores


def build_eval_prompts(eval_prompts: Sequence[Any], tokenizer: Any) -> EvalPrompts:
    """Accepts strings, chat message lists, or dicts with a 'prompt' key plus metadata (trlX's form)."""
    if len(eval_prompts) == 0:
        raise DataError("eval_prompts: empty; pass None to skip generation metrics, or at least one prompt")
    texts, ids, meta_rows = [], [], []
    for i, item in enumerate(eval_prompts):
        where = f"eval_prompts[{i}]"
        if isinstance(item, dict):
            if "prompt" not in item:
                raise DataError(f"{where}: a dict prompt needs a 'prompt' key (got keys {sorted(item)})")
            prompt, meta = item["prompt"], {k: v for k, v in item.items() if k != "prompt"}
        else:
            prompt, meta = item, {}
        segments = prompt_segments(prompt, tokenizer, where=where)
        texts.append("".join(segments.texts))
        ids.append(encode_prompt(segments, tokenizer))
        meta_rows.append(meta)
    keys = set().union(*meta_rows)
    missing = [k for k in keys if any(k not in m for m in meta_rows)]
    if missing:
        raise DataError(f"eval_prompts: metadata key {missing[0]!r} is set on some prompts but not all")
    return EvalPrompts(texts, ids, {k: [m[k] for m in meta_rows] for k in sorted(keys)})


@dataclass
class ScoredOutputs:
    prompts: list[str]  # one per output: each prompt repeated num_return_sequences times
    metadata: dict[str, list[Any]]  # likewise repeated
    means: dict[str, float]
    columns: dict[str, list[Any]]  # per-output scores


def score_outputs(metric_fns: Sequence[MetricFn], prompts: EvalPrompts, outputs: list[str],
                  n_return: int) -> ScoredOutputs:
    """Score generations (``n_return`` per prompt, in prompt order) with the metric functions: the one
    scoring step of training evals and of the promotion gate, so both judge a model the same way."""
    texts = [p for p in prompts.texts for _ in range(n_return)]
    metadata = {k: [v for v in vals for _ in range(n_return)] for k, vals in prompts.metadata.items()}
    means, columns = compute_metrics(metric_fns, samples=[p + o for p, o in zip(texts, outputs)],
                                     prompts=texts, outputs=outputs, metadata=metadata)
    return ScoredOutputs(texts, metadata, means, columns)


class Evaluator:
    def __init__(self, accelerator: Accelerator, tokenizer: Any, method: SFTConfig, *,
                 eval_data: Dataset | None, prompts: EvalPrompts | None, metric_fns: Sequence[MetricFn],
                 batch_size: int, pad_id: int, log_samples: int, synced_gpus: bool = False):
        self.accelerator = accelerator
        self.tokenizer = tokenizer
        self.method = method
        self.eval_data = eval_data
        self.prompts = prompts
        self.metric_fns = list(metric_fns)
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.log_samples = log_samples
        self.synced_gpus = synced_gpus
        self._warned_empty: set[str] = set()

    @property
    def has_work(self) -> bool:
        return self.eval_data is not None or self.prompts is not None

    def run(self, model: torch.nn.Module, step: int) -> EvalResult:
        result = EvalResult(step)
        if self.eval_data is not None:
            result.metrics["eval/loss"] = self.eval_loss(model)
        if self.prompts is not None:
            for suffix, gen_kwargs in sweep(self.method.gen_kwargs):
                self._generate_and_score(model, gen_kwargs, suffix, result)
        return result

    @torch.no_grad()
    def eval_loss(self, model: torch.nn.Module) -> float:
        rows = self._my_slice(list(range(len(self.eval_data))))
        totals = torch.zeros(2, dtype=torch.float64)
        was_training = model.training
        model.eval()
        for start in range(0, len(rows), self.batch_size):
            columns = self.eval_data[rows[start : start + self.batch_size]]
            batch = collate(columns["input_ids"], columns["labels"], self.pad_id)
            loss_sum, n_targets = token_loss_sum(model, batch, self.accelerator.device)
            totals += torch.tensor([loss_sum.item(), float(n_targets)], dtype=torch.float64)
        model.train(was_training)
        totals = self.accelerator.reduce(totals.to(self.accelerator.device), reduction="sum").cpu()
        return float(totals[0] / totals[1].clamp(min=1))

    def _generate_and_score(self, model, gen_kwargs: dict[str, Any], suffix: str, result: EvalResult) -> None:
        mine = self._my_slice(list(range(len(self.prompts.ids))))
        unwrapped = self.accelerator.unwrap_model(model)
        outputs = generate_texts(unwrapped, self.tokenizer, [self.prompts.ids[i] for i in mine], gen_kwargs,
                                 batch_size=self.method.eval_batch_size, stop_sequences=self.method.stop_sequences,
                                 synced_gpus=self.synced_gpus)
        if self.accelerator.num_processes > 1:
            outputs = gather_object(outputs)
        scored: list[Any] = [None, None]
        if self.accelerator.is_main_process:
            scored = list(self._score(outputs, int(gen_kwargs.get("num_return_sequences", 1))))
        if self.accelerator.num_processes > 1:
            broadcast_object_list(scored)
        means, rows = scored
        result.metrics.update({f"metrics/{k}{suffix}": v for k, v in means.items()})
        if not suffix or not result.samples:
            result.samples = rows

    def _score(self, outputs: list[str], n_return: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
        scored = score_outputs(self.metric_fns, self.prompts, outputs, n_return)
        prompts, metadata, means, columns = scored.prompts, scored.metadata, scored.means, scored.columns
        for fn in self.metric_fns:
            name = getattr(fn, "__name__", "")
            if name in ("exact_match", "rouge") and name not in self._warned_empty and not any(
                    k in metadata for k in ("reference", "references", "completion")):
                self._warned_empty.add(name)
                logger.warning("metric %r skipped: eval prompts carry no 'reference'", name)
        rows = []
        for i in range(min(self.log_samples, len(outputs))):
            row = {"prompt": prompts[i], "output": outputs[i]}
            row.update({k: v[i] for k, v in metadata.items()})
            row.update({k: v[i] for k, v in columns.items()})
            rows.append(row)
        return means, rows

    def _my_slice(self, items: list[int]) -> list[int]:
        return contiguous_slice(items, self.accelerator.process_index, self.accelerator.num_processes)


def resolve_best_metric(configured: str | None, metrics: dict[str, float]) -> str | None:
    """The eval metric that picks best/: train.best_metric (bare or as metrics/NAME); unset, trlX's rule
    (the mean reward, when metric_fn returns "reward"), else eval/loss if any."""
    if configured is None:
        return next((name for name in ("metrics/reward", "eval/loss") if name in metrics), None)
    for candidate in (configured, f"metrics/{configured}"):
        if candidate in metrics:
            return candidate
    raise ConfigError("train.best_metric", f"{configured!r} is not among the eval metrics: {sorted(metrics)}")


@torch.no_grad()
def check_packing_isolates_rows(accelerator: Accelerator, model: torch.nn.Module, train_data: Dataset, *,
                                seq_length: int, pad_id: int) -> None:
    """Packing relies on the model reading row boundaries from position_ids; verify it once on a few rows."""
    rows = list(range(min(8, len(train_data))))
    columns = train_data[rows]
    padded = collate(columns["input_ids"], columns["labels"], pad_id)
    packed = pack(columns["input_ids"], columns["labels"], seq_length, pad_id)
    if packed["input_ids"].shape[0] == len(rows):
        return  # nothing shares a block, so there is nothing to check
    was_training = model.training
    model.eval()
    a, _ = token_loss_sum(model, padded, accelerator.device)
    b, _ = token_loss_sum(model, packed, accelerator.device)
    model.train(was_training)
    if not torch.isclose(a.float(), b.float(), rtol=1e-3, atol=1e-3):
        model_type = getattr(getattr(accelerator.unwrap_model(model), "config", None), "model_type", "?")
        raise ConfigError("train.packing", f"this model ({model_type}) lets packed rows attend to each other "
                          f"(loss {float(b):.4f} packed vs {float(a):.4f} padded); set train.packing=false")
