"""Load the model and tokenizer named by the config, all decided from ``config.model`` here: embedded, a
local folder, a hub name or a GGUF file; the weights' dtype; a PEFT adapter. The trainer then sees a
model with some trainable parameters and does not care why."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from sft_core.adapters import apply_adapter, log_parameter_counts
from sft_core.config import EMBEDDED_MODEL, ModelConfig, TokenizerConfig
from sft_core.embedded import build_byte_tokenizer, build_tiny_llama
from sft_core.errors import ConfigError, ModelLoadError
from sft_core.export import MERGE_ON_EXPORT_ATTR
from sft_core.gguf import gguf_location, load_gguf_model, load_gguf_tokenizer

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_tokenizer(tok_cfg: TokenizerConfig, model_cfg: ModelConfig) -> PreTrainedTokenizerBase:
    path = tok_cfg.tokenizer_path or model_cfg.model_path
    field = "tokenizer.tokenizer_path" if tok_cfg.tokenizer_path else "model.model_path"
    gguf = None if tok_cfg.tokenizer_path else gguf_location(model_cfg)
    if path == EMBEDDED_MODEL:
        tokenizer = build_byte_tokenizer()
    elif gguf is not None:
        tokenizer = load_gguf_tokenizer(*gguf, **tok_cfg.tokenizer_extra_configs)
    else:
        local = Path(path).expanduser()
        if local.is_dir() and not any((local / f).exists() for f in TOKENIZER_FILES):
            raise ModelLoadError(f"{field}: folder {local} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
                                 "point tokenizer.tokenizer_path at a folder that has them")
        tokenizer = _from_pretrained(AutoTokenizer, path, field, trust_remote_code=model_cfg.trust_remote_code,
                                     **tok_cfg.tokenizer_extra_configs)
    if tokenizer.pad_token_id is None:
        # Many causal LMs ship without a pad token. Padding is masked out of attention and loss,
        # so reusing EOS is safe; EOS itself stays a target wherever the data puts it.
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("Tokenizer has no pad token; using EOS (%r) for padding", tokenizer.eos_token)
    tokenizer.padding_side = tok_cfg.padding_side
    tokenizer.truncation_side = tok_cfg.truncation_side
    if tok_cfg.chat_template is not None:
        tokenizer.chat_template = resolve_chat_template(tok_cfg.chat_template)
    return tokenizer


def load_model(model_cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    """The model to train: weights in model.dtype, bottom layers frozen, or wrapped in a PEFT adapter."""
    model = load_base_model(model_cfg, seed)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    freeze_bottom_layers(model, model_cfg.num_layers_unfrozen)
    if model_cfg.peft_config is not None:
        model = apply_adapter(model, model_cfg.peft_config)
        # Where the adapter's base comes from: AutoPeftModelForCausalLM and the registry reload it from here.
        base = model.peft_config["default"].base_model_name_or_path = base_model_reference(model_cfg)
        setattr(model, MERGE_ON_EXPORT_ATTR, model_cfg.merge_adapters_on_export)
        if not model_cfg.merge_adapters_on_export and (base == EMBEDDED_MODEL or base.endswith(".gguf")):
            logger.warning("The exported adapter's base is %s, which peft.AutoPeftModelForCausalLM cannot load "
                           "(sft_core's registry can). For a portable export set model.merge_adapters_on_export="
                           "true, or train from a folder (import-gguf / export-embedded)", base)
    log_parameter_counts(model)
    return model


def load_base_model(model_cfg: ModelConfig, seed: int) -> PreTrainedModel:
    """The pretrained weights alone (embedded, HF folder or hub name, or GGUF file), in model.dtype."""
    dtype = resolve_dtype(model_cfg.dtype)
    gguf = gguf_location(model_cfg)
    if model_cfg.model_path == EMBEDDED_MODEL:
        model = build_tiny_llama(seed).to(torch.float32 if dtype == "auto" else dtype)
    elif gguf is not None:
        model = load_gguf_model(*gguf, dtype=dtype, **model_cfg.model_extra_configs)
    else:
        if model_cfg.trust_remote_code:
            logger.warning("trust_remote_code is ON: Python code from %s will run", model_cfg.model_path)
        model = _from_pretrained(AutoModelForCausalLM, model_cfg.model_path, "model.model_path",
                                 trust_remote_code=model_cfg.trust_remote_code, dtype=dtype,
                                 **model_cfg.model_extra_configs)
    logger.info("Loaded %s (%s weights)", model_cfg.model_path, str(model.dtype).removeprefix("torch."))
    return model


def resolve_dtype(name: str) -> torch.dtype | str:
    """model.dtype as a torch dtype ("auto" stays "auto": from_pretrained reads the checkpoint's)."""
    if name == "float16" and not torch.cuda.is_available():
        raise ConfigError("model.dtype", "float16 weights cannot be trained on the CPU (no float16 matmul "
                          "kernels, and without loss scaling its gradients underflow); use bfloat16")
    return name if name == "auto" else getattr(torch, name)


def base_model_reference(model_cfg: ModelConfig) -> str:
    """What reloads the base model: the embedded name, a hub name, or an absolute local path."""
    gguf = gguf_location(model_cfg)
    if gguf is not None:
        return str((gguf[0] / gguf[1]).resolve())
    local = Path(model_cfg.model_path).expanduser()
    return str(local.resolve()) if local.exists() else model_cfg.model_path


# ChatML. An assistant turn also ends with the tokenizer's EOS where that is not <|im_end|> itself, so
# EOS is a training target and generation stops after the turn.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' }}"
    "{% if message['role'] == 'assistant' and eos_token and eos_token != '<|im_end|>' %}{{ eos_token }}{% endif %}"
    "{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def resolve_chat_template(setting: str) -> str:
    """tokenizer.chat_template: "chatml", a path to a .jinja file, or the Jinja text itself."""
    if setting == "chatml":
        return CHATML_TEMPLATE
    if setting.endswith((".jinja", ".j2")) and "{" not in setting:
        path = Path(setting).expanduser()
        if not path.is_file():
            raise ConfigError("tokenizer.chat_template", f"template file {path} does not exist")
        return path.read_text(encoding="utf-8")
    if "{%" not in setting and "{{" not in setting:
        raise ConfigError("tokenizer.chat_template", f"{setting!r} is neither \"chatml\", a .jinja file, "
                          "nor a Jinja template (no {% or {{ in it)")
    return setting


# Outputs worth keeping under selective checkpointing: the matmuls and attention are most of the
# compute; the elementwise ops between them (norms, rotary, SiLU, residual adds) hold most of the
# activation memory but are cheap to run again in backward.
_COSTLY_OPS = {
    getattr(torch.ops.aten, name).default
    for name in ("mm", "addmm", "bmm", "_scaled_dot_product_flash_attention_for_cpu",
                 "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                 "_scaled_dot_product_cudnn_attention")
    if hasattr(torch.ops.aten, name)
}


def _keep_costly_outputs(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _COSTLY_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def enable_gradient_checkpointing(model: PreTrainedModel, mode: bool | Literal["selective"]) -> None:
    """True: keep only each block's input and recompute the block in backward (least memory, ~1/3 more
    compute). "selective": keep matmul and attention outputs, recompute only the elementwise ops."""
    if not mode:
        return
    kwargs: dict = {"use_reentrant": False}
    if mode == "selective":
        kwargs["context_fn"] = partial(create_selective_checkpoint_contexts, _keep_costly_outputs)
    # transformers renamed gradient_checkpointing_enable (a deprecated alias "removed in v6", see
    # PreTrainedModel.gradient_checkpointing_enable in 5.23); older 5.x releases have only the old name.
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


AUTO_PASS_ACTIVATION_BYTES = 128 * 2**20  # what train.tokens_per_pass="auto" lets one pass keep on the CPU


def saved_activation_bytes_per_token(model: PreTrainedModel) -> int | None:
    """About what backward keeps per token, in fp32, from a decoder's shape; None if it has no such shape.

    Each layer keeps ~11 hidden-sized tensors (norm inputs and outputs, q/k/v and their rotary
    copies, attention output, residual sums) and ~4 intermediate-sized ones (gate, up, SiLU, their
    product); the loss keeps ~3 vocab-sized ones (logits, the fp32 copy, the softmax).
    """
    config = getattr(model, "config", None)
    hidden, layers = getattr(config, "hidden_size", None), getattr(config, "num_hidden_layers", None)
    if not hidden or not layers:
        return None
    intermediate = getattr(config, "intermediate_size", None) or 4 * hidden
    vocab = getattr(config, "vocab_size", None) or 0
    return 4 * (layers * (11 * hidden + 4 * intermediate) + 3 * vocab)


def resolve_tokens_per_pass(setting: int | str | None, model: PreTrainedModel, *, on_cpu: bool,
                            deepspeed: bool) -> int | None:
    """train.tokens_per_pass as a number of token slots, or None for one pass per micro-batch.

    "auto" splits only on the CPU: there a pass of a few hundred tokens keeps the matmuls as fast as
    one big pass, and memory (RSS) is what runs out. A GPU wants big passes; DeepSpeed steps its
    engine on every backward at an accumulation boundary, so it gets one pass per micro-batch.
    """
    if setting != "auto":
        if setting is not None and deepspeed:
            raise ConfigError("train.tokens_per_pass", "DeepSpeed runs one pass per micro-batch; set it to null "
                              "and lower train.batch_size (with gradient_accumulation_steps) instead")
        return setting
    per_token = saved_activation_bytes_per_token(model)
    if not on_cpu or deepspeed or not per_token:
        return None
    return max(1, AUTO_PASS_ACTIVATION_BYTES // per_token)


def freeze_bottom_layers(model: PreTrainedModel, num_layers_unfrozen: int) -> None:
    """Train only the top ``num_layers_unfrozen`` blocks (plus final norm and head); -1 trains all."""
    if num_layers_unfrozen < 0:
        return
    blocks = _decoder_blocks(model)
    model.get_input_embeddings().requires_grad_(False)
    for block in blocks[: max(len(blocks) - num_layers_unfrozen, 0)]:
        block.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("model.num_layers_unfrozen", f"{num_layers_unfrozen} leaves no trainable parameter")


def _decoder_blocks(model: PreTrainedModel) -> torch.nn.ModuleList:
    n = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ConfigError("model.num_layers_unfrozen", f"cannot find the {n} decoder blocks of {type(model).__name__}")


def _from_pretrained(cls, path: str, field: str, **kwargs):
    local = Path(path).expanduser()
    looks_local = local.exists() or path.startswith((".", "/", "~")) or path.count("/") > 1
    if looks_local and not local.is_dir():
        raise ModelLoadError(f"{field}: {path} does not exist (expected a local HuggingFace model folder)")
    if local.is_dir() and cls is AutoModelForCausalLM:
        if not (local / "config.json").exists():
            raise ModelLoadError(f"{field}: {local} has no config.json, so it is not a HuggingFace model folder")
        if not any(local.glob("*.safetensors")):
            raise ModelLoadError(f"{field}: {local} has no .safetensors weights. Weights are read only as safetensors "
                                 "(pickled .bin/.pt files can run code when loaded); convert them where you trust "
                                 "them: AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(DIR)")
    if cls is AutoModelForCausalLM:
        kwargs["use_safetensors"] = True
    try:
        return cls.from_pretrained(str(local) if local.is_dir() else path, **kwargs)
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise ModelLoadError(f"{field}: {path} ships its own Python code, which is not run unless you set "
                             "model.trust_remote_code=true (only for a folder you trust)") from None
    except OSError as err:
        if local.is_dir():
            raise ModelLoadError(f"{field}: cannot load from {local}: {err}") from err
        raise ModelLoadError(
            f"{field}: {path!r} is not a local folder and could not be fetched from the HuggingFace hub "
            f"(offline, or no such repo). Download it where there is network "
            f"(`hf download {path} --local-dir DIR`) and set {field} to DIR. Cause: {str(err).splitlines()[0]}"
        ) from err
