"""``train()``: trlX's entry point for SFT, composed from sft_core's setup functions."""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Sequence

from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed

from sft_core.config import TRLConfig, default_sft_config
from sft_core.data.prepared import prepare_from_config
from sft_core.evaluation import build_eval_prompts
from sft_core.metrics import MetricFn, resolve_metrics
from sft_core.modeling import enable_gradient_checkpointing, load_model, load_tokenizer
from sft_core.nodes import naming_lost_nodes
from sft_core.trainer import AccelerateSFTTrainer, Callback

logger = logging.getLogger(__name__)


def make_accelerator(config: TRLConfig) -> Accelerator:
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # Accelerate keeps process-wide state and refuses a second run in the same process
        # (a notebook, a Prefect worker) with another mixed_precision: "AcceleratorState has
        # already been initialized and cannot be changed" (AcceleratorState._check_initialized;
        # https://github.com/huggingface/accelerate/issues/2463). One process has no process
        # group to lose, so start from a clean state. _reset_state is private; Accelerate's own
        # tests call it the same way between setups (https://github.com/huggingface/accelerate/pull/1055).
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(
        mixed_precision=config.train.mixed_precision,
        gradient_accumulation_steps=config.train.gradient_accumulation_steps,
        cpu=config.distributed.use_cpu,
    )


def train(  # noqa: PLR0913 - trlX's signature, argument for argument
    model_path: str | None = None,
    reward_fn: Callable[..., Any] | None = None,
    dataset: Any = None,
    samples: Sequence[Any] | None = None,
    rewards: Sequence[float] | None = None,
    prompts: Sequence[Any] | None = None,
    eval_prompts: Sequence[Any] | None = None,
    metric_fn: Callable[..., dict[str, Any]] | None = None,
    config: TRLConfig | None = None,
    stop_sequences: Sequence[str] | None = None,
    *,
    eval_samples: Sequence[Any] | None = None,
    callbacks: Sequence[Callback] = (),
    trainer_cls: type[AccelerateSFTTrainer] = AccelerateSFTTrainer,
) -> AccelerateSFTTrainer:
    """Fine-tune and return the trainer (call ``.save_pretrained(dir)`` on it).

    The positional order is ``trlx.train``'s. Its RL arguments (``reward_fn``, ``dataset``, ``rewards``,
    ``prompts``) are an error here: sft_core trains supervised only.
    ``samples``: strings, [prompt, completion] pairs, alternating dialogues, or chat messages.
    Without ``samples``, ``config.data`` names the data (the embedded demo by default).
    ``eval_prompts``: strings, chat message lists, or dicts {"prompt": ..., **metadata}.
    ``metric_fn(samples=, prompts=, outputs=, **metadata)`` -> {name: list | float}.
    ``trainer_cls``: a subclass to swap in (e.g. one with another loss); trlX picks it by name.
    """
    rl_arguments = {"reward_fn": reward_fn, "dataset": dataset, "rewards": rewards, "prompts": prompts}
    given = sorted(name for name, value in rl_arguments.items() if value is not None)
    if given:
        raise ValueError(f"{given}: RL arguments of trlx.train; sft_core trains supervised only (use samples=..., "
                         "and metric_fn for a reward to watch)")
    config = config or default_sft_config()
    if model_path is not None:
        config = config.evolve(model=dict(model_path=model_path))
    if stop_sequences:
        config = config.evolve(method=dict(stop_sequences=list(stop_sequences)))

    accelerator = make_accelerator(config)
    with naming_lost_nodes(config.distributed):  # several machines: a failure caused by a dead node names it
        return _train(config, accelerator, samples=samples, eval_samples=eval_samples, eval_prompts=eval_prompts,
                      metric_fn=metric_fn, callbacks=callbacks, trainer_cls=trainer_cls)


def _train(config: TRLConfig, accelerator: Accelerator, *, samples: Sequence[Any] | None,
           eval_samples: Sequence[Any] | None, eval_prompts: Sequence[Any] | None,
           metric_fn: Callable[..., dict[str, Any]] | None, callbacks: Sequence[Callback],
           trainer_cls: type[AccelerateSFTTrainer]) -> AccelerateSFTTrainer:
    set_seed(config.train.seed)
    tokenizer = load_tokenizer(config.tokenizer, config.model)
    metric_fns: list[MetricFn] = resolve_metrics(config.method)
    if metric_fn is not None:
        metric_fns.append(metric_fn)

    with accelerator.main_process_first():  # rank 0 tokenizes; the others read its cache
        data = prepare_from_config(config, tokenizer, samples=samples, eval_samples=eval_samples,
                                   eval_prompts=eval_prompts)
    prompts = build_eval_prompts(data.eval_prompts, tokenizer) if data.eval_prompts is not None else None
    if accelerator.is_main_process:
        logger.info("train data (%s): %s", data.source, data.train.stats.summary())
        if data.eval is not None:
            logger.info("eval data: %s", data.eval.stats.summary())

    model = load_model(config.model, tokenizer, seed=config.train.seed)
    enable_gradient_checkpointing(model, config.train.gradient_checkpointing)
    trainer = trainer_cls(
        config, accelerator=accelerator, model=model, tokenizer=tokenizer, train_data=data.train.dataset,
        eval_data=data.eval.dataset if data.eval else None, eval_prompts=prompts, metric_fns=metric_fns,
        callbacks=callbacks,
    )
    trainer.learn()
    return trainer
