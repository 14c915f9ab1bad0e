"""Scoring one model on the gate set, as the trainer's evals score it: generation metrics from the
same generation code and metric functions, plus ``eval/loss``, the token loss of the references.

Both sides of a promotion are scored here, in the same process, with the same ``gen_kwargs``, so a
champion is never judged by numbers from another run, another gate set or other settings.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import torch

from sft_core.data.batching import collate
from sft_core.data.prepare import RowTokenizer, segment_rows
from sft_core.evaluation import build_eval_prompts, score_outputs
from sft_core.gate_set import GateSet
from sft_core.generation import generate_texts, sweep
from sft_core.losses import token_loss_sum
from sft_core.metrics import resolve_metric

logger = logging.getLogger(__name__)


def load_registered(registered_name: str, version: str, tracking_uri: str) -> tuple[Any, Any]:
    """A registered version's model and tokenizer, as MLflow serves them (what ``models:/`` users load)."""
    import mlflow
    import mlflow.transformers

    # The version's own artifact location, not models:/ (which resolves through the process-wide registry URI).
    source = mlflow.MlflowClient(tracking_uri).get_model_version_download_uri(registered_name, version)
    mlflow.set_tracking_uri(tracking_uri)  # for an mlflow-artifacts: location on a tracking server
    components = mlflow.transformers.load_model(source, return_type="components")
    return components["model"], components["tokenizer"]


@torch.no_grad()
def score_model(model: Any, tokenizer: Any, gate: GateSet, method: Any, *, seed: int) -> dict[str, float]:
    """``{"eval/loss": ..., "metrics/NAME": ...}`` on the gate set. ``method`` is the config's method section
    (gen_kwargs, stop_sequences, eval_batch_size, metric_module_prefixes); a gen_kwargs sweep gives one
    metric per value, suffixed as in training."""
    metric_fns = [resolve_metric(name, method.metric_module_prefixes) for name in gate.metrics]
    prompts = build_eval_prompts(gate.prompts, tokenizer)
    scores = {"eval/loss": reference_loss(model, tokenizer, gate.prompts, batch_size=method.eval_batch_size)}
    for suffix, gen_kwargs in sweep(method.gen_kwargs):
        torch.manual_seed(seed)  # sampled generation draws the same way for every model scored
        outputs = generate_texts(model, tokenizer, prompts.ids, gen_kwargs, batch_size=method.eval_batch_size,
                                 stop_sequences=method.stop_sequences)
        scored = score_outputs(metric_fns, prompts, outputs, int(gen_kwargs.get("num_return_sequences", 1)))
        scores.update({f"metrics/{k}{suffix}": v for k, v in scored.means.items()})
    return scores


def reference_loss(model: Any, tokenizer: Any, rows: list[dict[str, Any]], *, batch_size: int) -> float:
    """Mean next-token loss of each reference after its prompt, masked and tokenized as training does
    (``eval/loss`` on the gate set): it ranks models long before their generations turn exact."""
    tokenized = reference_rows(rows, tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, n_targets = 0.0, 0
    try:
        for start in range(0, len(rows), batch_size):
            batch = collate(tokenized["input_ids"][start : start + batch_size],
                            tokenized["labels"][start : start + batch_size], tokenizer.pad_token_id)
            loss_sum, n = token_loss_sum(model, batch, device)
            total, n_targets = total + float(loss_sum), n_targets + n
    finally:
        model.train(was_training)
    return total / max(n_targets, 1)


def reference_rows(rows: list[dict[str, Any]], tokenizer: Any) -> dict[str, list]:
    """input_ids and labels of each prompt + reference, the reference (and EOS) as targets: the
    training rows' own tokenizer (``RowTokenizer``), with no length limit."""
    samples = [[row["prompt"], str(row["reference"])] if isinstance(row["prompt"], str)
               else [*row["prompt"], {"role": "assistant", "content": str(row["reference"])}] for row in rows]
    segments = segment_rows(samples, tokenizer, name="gate prompts")
    columns = {key: [s[key] for s in segments] for key in ("texts", "trainable", "templated")}
    return RowTokenizer(tokenizer, seq_length=sys.maxsize, side="right")(columns)
