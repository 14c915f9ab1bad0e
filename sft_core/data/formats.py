"""Turn user samples into segments: texts, each marked trainable or not.

Four sample shapes are accepted (as in trlX, plus chat):
  "text"                               -> loss on every token, EOS appended
  ["prompt", "completion"]             -> loss on the completion and its EOS
  ["p1", "c1", "p2", "c2", ...]        -> loss on every model turn, EOS after the last
  {"messages": [{"role":..., "content":...}, ...]}  (or the bare list)
                                       -> rendered with the chat template, loss on assistant turns
  {"conversations": [{"from":..., "value":...}, ...]}  (ShareGPT: human/gpt/system/tool)
                                       -> the same, after mapping to OpenAI roles
Chat masking renders growing prefixes of the conversation and takes the text each assistant
turn adds, so it needs no ``{% generation %}`` markers in the template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

from sft_core.errors import DataError

SampleFormat = Literal["text", "pairs", "dialogue", "chat"]


@dataclass(frozen=True)
class Segments:
    texts: list[str]
    trainable: list[bool]
    templated: bool = False  # rendered by a chat template: it brings its own BOS and end-of-turn tokens

    def as_row(self) -> dict[str, Any]:
        return {"texts": self.texts, "trainable": self.trainable, "templated": self.templated}


# ShareGPT's speaker names -> OpenAI roles ("user"/"assistant" appear in some ShareGPT exports too).
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "tool": "tool",
                  "user": "user", "assistant": "assistant"}


def sharegpt_to_messages(turns: Any, where: str = "sample") -> list[dict[str, Any]]:
    """ShareGPT ``conversations`` ([{"from": "human", "value": ...}, ...]) as OpenAI messages."""
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: 'conversations' must be a non-empty list of {{'from', 'value'}} turns")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise DataError(f"{where}: conversations[{i}]: each turn needs 'from' and 'value'")
        role = SHAREGPT_ROLES.get(turn["from"])
        if role is None:
            raise DataError(f"{where}: conversations[{i}].from: unknown role {turn['from']!r}; ShareGPT roles are "
                            "human, gpt, system and tool")
        messages.append({"role": role, "content": turn["value"]})
    return messages


def detect_format(sample: Any, where: str = "sample") -> SampleFormat:
    if isinstance(sample, str):
        return "text"
    if isinstance(sample, dict) and ("messages" in sample or "conversations" in sample):
        return "chat"
    if isinstance(sample, (list, tuple)) and sample and all(isinstance(m, dict) for m in sample):
        return "chat"
    if isinstance(sample, (list, tuple)):
        return "pairs" if len(sample) == 2 else "dialogue"
    raise DataError(f"{where}: cannot tell the format of a sample of type {type(sample).__name__}: expected a "
                    "string, a [prompt, completion] list, an alternating list, or chat messages")


def to_segments(sample: Any, tokenizer: Any = None, *, where: str = "sample") -> Segments:
    """One sample -> Segments. ``where`` names the sample in errors (e.g. 'samples[12]')."""
    fmt = detect_format(sample, where)
    if fmt == "text":
        if not sample:
            raise DataError(f"{where}: empty text")
        return Segments([sample], [True])
    if fmt == "chat":
        if isinstance(sample, dict) and "messages" not in sample:
            return chat_segments(sharegpt_to_messages(sample["conversations"], where), tokenizer, where=where)
        messages = sample["messages"] if isinstance(sample, dict) else sample
        return chat_segments(messages, tokenizer, where=where)
    turns = list(sample)
    if len(turns) < 2 or len(turns) % 2:
        raise DataError(f"{where}: a prompt/completion list needs an even number (>= 2) of strings, "
                        f"alternating prompt and completion; got {len(turns)}")
    for i, turn in enumerate(turns):
        if not isinstance(turn, str):
            raise DataError(f"{where}[{i}]: expected a string, got {type(turn).__name__}")
        if i % 2 == 1 and not turn:
            raise DataError(f"{where}[{i}]: empty completion: there is nothing to train on")
    return Segments(turns, [i % 2 == 1 for i in range(len(turns))])


def chat_segments(messages: Sequence[dict[str, Any]], tokenizer: Any, *, where: str = "sample") -> Segments:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{where}: chat messages need a tokenizer with a chat template "
                        "(set tokenizer.tokenizer_path to one that has it)")
    _check_messages(messages, where)
    full = render_chat(tokenizer, messages)
    texts: list[str] = []
    trainable: list[bool] = []
    pos = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(render_chat(tokenizer, messages[:i], add_generation_prompt=True))
        end_text = render_chat(tokenizer, messages[: i + 1])
        if not full.startswith(end_text) or start > len(end_text) or start < pos:
            raise DataError(f"{where}: the chat template does not render conversations prefix-stably, "
                            "so assistant turns cannot be located; use a template without that behaviour")
        texts += [full[pos:start], full[start : len(end_text)]]
        trainable += [False, True]
        pos = len(end_text)
    if pos < len(full):
        texts.append(full[pos:])
        trainable.append(False)
    keep = [i for i, t in enumerate(texts) if t]
    return Segments([texts[i] for i in keep], [trainable[i] for i in keep], templated=True)


def render_chat(tokenizer: Any, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False) -> str:
    if not messages and not add_generation_prompt:
        return ""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def prompt_segments(prompt: Any, tokenizer: Any = None, *, where: str = "eval_prompts") -> Segments:
    """A generation prompt: a string, or chat messages rendered with the generation prompt."""
    if isinstance(prompt, str):
        if not prompt:
            raise DataError(f"{where}: empty prompt")
        return Segments([prompt], [False])
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, dict) for m in prompt):
        _check_messages(prompt, where, need_assistant=False)
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise DataError(f"{where}: chat prompts need a tokenizer with a chat template")
        return Segments([render_chat(tokenizer, prompt, add_generation_prompt=True)], [False], templated=True)
    raise DataError(f"{where}: a prompt must be a string or a list of chat messages, got {type(prompt).__name__}")


def _check_messages(messages: Sequence[Any], where: str, need_assistant: bool = True) -> None:
    if not messages:
        raise DataError(f"{where}: empty message list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}.messages[{i}]: each message needs 'role' and 'content'")
        if m["role"] not in ("system", "user", "assistant", "tool"):
            raise DataError(f"{where}.messages[{i}].role: unknown role {m['role']!r}")
        if not isinstance(m["content"], str):
            raise DataError(f"{where}.messages[{i}].content: expected a string, got {type(m['content']).__name__}")
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: no assistant turn, so no token would be trained on")
