"""File loaders, column mapping, templates and filters, on real files."""

import json

import datasets
import pytest

from sft_core import DataError
from sft_core.config import DataConfig
from sft_core.data.sources import ALPACA_PROMPT_WITH_INPUT, load_data, parse_filter, read_rows, row_to_sample

ROWS = [{"prompt": f"q{i} ", "completion": f"a{i}", "label": i % 2} for i in range(10)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("suffix", ["jsonl", "json", "csv", "parquet"])
def test_every_file_type_loads_the_same_rows(tmp_path, suffix):
    path = tmp_path / f"d.{suffix}"
    if suffix == "jsonl":
        write_jsonl(path, ROWS)
    elif suffix == "json":
        path.write_text(json.dumps(ROWS))
    else:
        ds = datasets.Dataset.from_list(ROWS)
        ds.to_csv(str(path), index=False) if suffix == "csv" else ds.to_parquet(str(path))
    rows = read_rows(str(path))
    assert [str(r.values["prompt"]) for r in rows] == [r["prompt"] for r in ROWS]
    assert str(path) in rows[3].where


def test_txt_is_one_text_sample_per_line(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("first line\n\nsecond line\n")
    loaded = load_data(DataConfig(path=str(path), eval_fraction=0), seed=0)
    assert loaded.train == ["first line", "second line"] and loaded.eval is None


def test_saved_dataset_folder_loads(tmp_path):
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "saved"))
    rows = read_rows(str(tmp_path / "saved"))
    assert len(rows) == 10 and rows[0].values["completion"] == "a0"


def test_pairs_with_held_out_prompts_and_references(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    loaded = load_data(DataConfig(path=str(path), eval_fraction=0.2), seed=0)
    assert len(loaded.train) == 8 and len(loaded.eval) == 2
    assert {p["reference"] for p in loaded.eval_prompts} == {e[1] for e in loaded.eval}
    assert not {tuple(t) for t in loaded.train} & {tuple(e) for e in loaded.eval}


def test_column_mapping_and_filter(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"a{i}", "label": i % 2} for i in range(6)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = DataConfig(path=str(path), prompt_column="question", completion_column="answer", filter="label == 1",
                     eval_fraction=0)
    loaded = load_data(cfg, seed=0)
    assert loaded.train == [["q1", "a1"], ["q3", "a3"], ["q5", "a5"]]


def test_alpaca_template(tmp_path):
    row = read_rows(str(write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Add", "input": "1 2", "output": "3"}])))[0]
    prompt, completion = row_to_sample(row, DataConfig(template="alpaca"))
    assert prompt == ALPACA_PROMPT_WITH_INPUT.format(instruction="Add", input="1 2") and completion == "3"
    assert "### Input" not in row_to_sample(
        read_rows(str(write_jsonl(tmp_path / "b.jsonl", [{"instruction": "Hi", "input": "", "output": "yo"}])))[0],
        DataConfig(template="alpaca"))[0]


def test_custom_template_names_missing_column(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"q": "x", "completion": "y"}])
    with pytest.raises(DataError, match=r"d.jsonl:1.*'question'"):
        load_data(DataConfig(path=str(path), template="Q: {question}\nA: ", eval_fraction=0), seed=0)


def test_chat_rows_use_the_messages_column(tmp_path):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": msgs}] * 4)
    loaded = load_data(DataConfig(path=str(path), eval_fraction=0.25), seed=0)
    assert loaded.train[0] == msgs
    assert loaded.eval_prompts == [{"prompt": msgs[:1], "reference": "yo"}]


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:3: malformed JSON"):
        read_rows(str(path))


def test_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"text": "ok"}\n{"text": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.jsonl:2: not valid UTF-8"):
        read_rows(str(path))


def test_missing_column_names_the_row(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "completion": "c"}, {"prompt": "p", "answer": "c"}])
    with pytest.raises(DataError, match=r"d.jsonl:2: cannot tell which columns"):
        load_data(DataConfig(path=str(path), eval_fraction=0), seed=0)


def test_empty_file_and_empty_after_filter(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no rows"):
        read_rows(str(tmp_path / "empty.jsonl"))
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(DataError, match="no row is left after data.filter"):
        load_data(DataConfig(path=str(path), filter="label == 7"), seed=0)


def test_filter_grammar():
    column, op, value = parse_filter("label != 'spam'")
    assert column == "label" and value == "spam" and op("ham", value)
    with pytest.raises(DataError, match="data.filter"):
        parse_filter("label is 1")


def test_missing_file_and_offline_hub_name(monkeypatch):
    with pytest.raises(DataError, match="file not found"):
        read_rows("./nope.jsonl")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="HuggingFace hub"):
        read_rows("someone/some-dataset")
