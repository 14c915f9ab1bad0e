"""Property tests: whatever a user writes in a config or a data file, it either loads or raises one of
sft_core's own errors (which name the field or file), never a bare KeyError/IndexError/TypeError."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sft_core import TRLConfig
from sft_core.config import DataConfig, default_sft_config, parse_set_args
from sft_core.data.sources import load_data
from sft_core.errors import SFTError

SECTIONS = list(TRLConfig.model_fields)
FIELDS = sorted({f for s in SECTIONS for f in getattr(TRLConfig.model_fields[s].annotation, "model_fields", {})})

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)
keys = st.one_of(st.sampled_from(SECTIONS), st.sampled_from(FIELDS), st.text(max_size=10))
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def loads_or_says_why(load: Any, *args: Any) -> None:
    try:
        load(*args)
    except SFTError as err:
        assert str(err), "an error must say something"


@PROPERTY
@given(st.dictionaries(st.sampled_from(SECTIONS + ["pipeline", "trainer"]),
                       st.one_of(values, st.dictionaries(keys, values, max_size=4)), max_size=4))
def test_any_config_mapping_loads_or_raises_config_error(raw: dict[str, Any]) -> None:
    loads_or_says_why(TRLConfig.from_dict, raw)


@PROPERTY
@given(st.one_of(values, st.lists(values, max_size=3)))
def test_any_yaml_document_loads_or_raises_config_error(document: Any) -> None:
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(yaml.safe_dump(document))
        loads_or_says_why(TRLConfig.load_yaml, path)


@PROPERTY
@given(st.dictionaries(st.builds(lambda a, b: f"{a}.{b}", keys, keys), values, max_size=3))
def test_any_dotted_override_applies_or_raises_config_error(overrides: dict[str, Any]) -> None:
    loads_or_says_why(default_sft_config().with_overrides, overrides)


@PROPERTY
@given(st.lists(st.text(max_size=30), max_size=4))
def test_any_set_argument_parses_or_raises_config_error(items: list[str]) -> None:
    loads_or_says_why(lambda: default_sft_config().with_overrides(parse_set_args(items)))


json_rows = st.lists(st.dictionaries(st.sampled_from(["text", "prompt", "completion", "messages", "label", "x"]),
                                     values, max_size=3), max_size=5)


def file_contents():
    import json

    as_jsonl = json_rows.map(lambda rows: "\n".join(json.dumps(r) for r in rows).encode())
    as_json = st.one_of(values, json_rows).map(lambda v: json.dumps(v).encode())
    as_csv = st.lists(st.lists(st.text(max_size=6), max_size=4), max_size=5).map(
        lambda rows: "\n".join(",".join(r) for r in rows).encode())
    return st.one_of(as_jsonl, as_json, as_csv, st.binary(max_size=80), st.text(max_size=80).map(str.encode))


@PROPERTY
@given(content=file_contents(), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".txt"]),
       fmt=st.sampled_from(["auto", "text", "pairs", "chat"]), template=st.sampled_from([None, "alpaca", "{x}: "]),
       filter_=st.sampled_from([None, "label == 1", "x != a"]))
def test_any_data_file_loads_or_raises_data_error(content: bytes, suffix: str, fmt: str, template: str | None,
                                                  filter_: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data{suffix}"
        path.write_bytes(content)
        config = DataConfig(path=str(path), format=fmt, template=template, filter=filter_)
        loads_or_says_why(lambda: load_data(config, seed=0))
