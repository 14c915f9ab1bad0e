"""Chat data: ShareGPT rows beside OpenAI messages, chat templates for models without one, show-data."""

from __future__ import annotations

import json

import pytest

from sft_core import ConfigError, DataError
from sft_core.cli import main
from sft_core.config import DataConfig, ModelConfig, TokenizerConfig
from sft_core.data.masking import IGNORE_INDEX
from sft_core.data.prepare import prepare_samples
from sft_core.data.sources import load_data
from sft_core.modeling import CHATML_TEMPLATE, load_tokenizer

OPENAI = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of Veltrane?"},
                       {"role": "assistant", "content": "Osmuir."}], "key_phrase": "Osmuir"}
SHAREGPT = {"conversations": [{"from": "system", "value": "Be brief."},
                              {"from": "human", "value": "Capital of Veltrane?"},
                              {"from": "gpt", "value": "Osmuir."}], "key_phrase": "Osmuir"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_sharegpt_rows_become_the_same_messages_as_openai_rows(tmp_path):
    openai = load_data(DataConfig(path=write_jsonl(tmp_path / "o.jsonl", [OPENAI] * 3), eval_fraction=0), seed=0)
    sharegpt = load_data(DataConfig(path=write_jsonl(tmp_path / "s.jsonl", [SHAREGPT] * 3), eval_fraction=0), seed=0)
    assert sharegpt.train == openai.train == [OPENAI["messages"]] * 3


def test_held_out_prompts_carry_the_rows_key_phrase(tmp_path):
    cfg = DataConfig(path=write_jsonl(tmp_path / "t.jsonl", [OPENAI] * 2),
                     eval_path=write_jsonl(tmp_path / "h.jsonl", [SHAREGPT] * 2))
    prompts = load_data(cfg, seed=0).eval_prompts
    assert prompts == [{"prompt": OPENAI["messages"][:-1], "reference": "Osmuir.", "key_phrase": "Osmuir"}] * 2


def test_an_unknown_sharegpt_role_names_file_and_line(tmp_path):
    bad = {"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "hello"}]}
    path = write_jsonl(tmp_path / "d.jsonl", [SHAREGPT, bad])
    with pytest.raises(DataError) as raised:
        load_data(DataConfig(path=path, eval_fraction=0), seed=0)
    assert f"{path}:2" in str(raised.value) and "'bot'" in str(raised.value) and "human, gpt" in str(raised.value)


def test_chatml_trains_on_assistant_turns_and_their_eos():
    tokenizer = load_tokenizer(TokenizerConfig(chat_template="chatml"), ModelConfig())
    split = prepare_samples([SHAREGPT], tokenizer, seq_length=256, truncation_side="right", cache_dir=None)
    row = split.dataset[0]
    trained = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX])
    assert trained == "Osmuir.<|im_end|></s>\n"  # the turn as the template ends it
    assert tokenizer.decode(row["input_ids"]).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user")


def test_chat_template_from_a_jinja_file_or_string(tmp_path):
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    (tmp_path / "t.jinja").write_text(template)
    for setting in (str(tmp_path / "t.jinja"), template):
        tokenizer = load_tokenizer(TokenizerConfig(chat_template=setting), ModelConfig())
        assert tokenizer.chat_template == template
    assert load_tokenizer(TokenizerConfig(chat_template="chatml"), ModelConfig()).chat_template == CHATML_TEMPLATE
    for bad in ("chatlm", str(tmp_path / "missing.jinja")):
        with pytest.raises(ConfigError, match="tokenizer.chat_template"):
            load_tokenizer(TokenizerConfig(chat_template=bad), ModelConfig())


@pytest.mark.parametrize("row", [OPENAI, SHAREGPT], ids=["openai", "sharegpt"])
def test_show_data_marks_the_trained_tokens_of_both_formats(tmp_path, capsys, row):
    path = write_jsonl(tmp_path / "d.jsonl", [row] * 4)
    assert main(["show-data", "--set", f"data.path={path}", "--set", "tokenizer.chat_template=chatml",
                 "--set", "train.seq_length=256",
                 "--set", f"data.cache_dir={tmp_path / 'cache'}", "-n", "1"]) == 0
    shown = capsys.readouterr().out
    assert "<|im_start|>assistant\n[[Osmuir.<|im_end|></s>\n]]" in shown
