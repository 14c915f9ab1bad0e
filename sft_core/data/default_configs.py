"""trlX's ``trlx.data.default_configs`` under sft_core: its config classes and its SFT defaults.

``default_sft_config()`` here is trlX's (seq_length 1024, batch 8, AdamW 1e-4, cosine_annealing...),
with the embedded model in place of gpt2, which needs the hub. Our own defaults, the demo recipe,
are ``sft_core.default_sft_config()``.
"""

from sft_core.config import (EMBEDDED_MODEL, ModelConfig, OptimizerConfig, SchedulerConfig, SFTConfig,
                             TokenizerConfig, TrainConfig, TRLConfig)

__all__ = ["ModelConfig", "OptimizerConfig", "SFTConfig", "SchedulerConfig", "TRLConfig", "TokenizerConfig",
           "TrainConfig", "default_sft_config"]


def default_sft_config() -> TRLConfig:
    """trlX's ``default_sft_config()`` at 3340c2f, field for field, except the model (gpt2 -> embedded).

    trlX also sets train.pipeline and train.trainer; they choose trlX's RL machinery, which sft_core
    does not have, so they are left out here rather than reported as ignored on every call.
    Fields trlX leaves at its class defaults keep ours (tracker: metrics.jsonl, not wandb).
    """
    return TRLConfig(
        train=TrainConfig(
            seq_length=1024,
            epochs=100,
            total_steps=1000,
            batch_size=8,
            checkpoint_interval=10000,
            eval_interval=100,
        ),
        model=ModelConfig(model_path=EMBEDDED_MODEL, num_layers_unfrozen=-1),
        tokenizer=TokenizerConfig(tokenizer_path=None, truncation_side="right"),  # None: the model's tokenizer
        optimizer=OptimizerConfig(
            name="adamw", kwargs=dict(lr=1.0e-4, betas=(0.9, 0.95), eps=1.0e-8, weight_decay=1.0e-6)
        ),
        scheduler=SchedulerConfig(
            name="cosine_annealing", kwargs=dict(T_max=1e12, eta_min=1.0e-4)  # train.total_steps
        ),
        method=SFTConfig(
            name="sftconfig",
            gen_kwargs=dict(max_new_tokens=40, top_k=0, top_p=1.0, do_sample=True),
            metrics=[],  # trlX has no built-in metrics: only metric_fn's
        ),
    )
