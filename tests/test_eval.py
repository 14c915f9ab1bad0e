"""Generation and metrics."""

import math

import pytest

from sft_core import MetricError
from sft_core.data.formats import prompt_segments
from sft_core.data.prepare import encode_prompt
from sft_core.embedded import build_byte_tokenizer, build_tiny_llama
from sft_core.evaluation import build_eval_prompts
from sft_core.generation import generate_texts, sweep, trim_at_stop
from sft_core.metrics import compute_metrics, distinct_n, exact_match, resolve_metric, rouge


@pytest.fixture(scope="module")
def model_and_tok():
    return build_tiny_llama(3), build_byte_tokenizer()


def test_batched_generation_equals_one_at_a_time(model_and_tok):
    model, tok = model_and_tok
    prompts = [encode_prompt(prompt_segments(p), tok) for p in ["reverse abc\n", "add 1 22\n", "x", "upper hello\n"]]
    kwargs = dict(max_new_tokens=6, do_sample=False)
    batched = generate_texts(model, tok, prompts, kwargs, batch_size=4)
    single = [generate_texts(model, tok, [p], kwargs, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert all(len(t) > 0 for t in batched)


def test_num_return_sequences_keeps_prompt_order(model_and_tok):
    model, tok = model_and_tok
    prompts = [encode_prompt(prompt_segments(p), tok) for p in ["a", "b"]]
    outs = generate_texts(model, tok, prompts, dict(max_new_tokens=3, do_sample=True, num_return_sequences=2),
                          batch_size=2)
    assert len(outs) == 4


def test_stop_sequences_and_sweep():
    assert trim_at_stop("abc\nQ: more", ["\nQ:", "zzz"]) == "abc"
    assert trim_at_stop("abc", []) == "abc"
    assert list(sweep({"max_new_tokens": 4})) == [("", {"max_new_tokens": 4})]
    assert [s for s, _ in sweep({"temperature": [0.5, 1.0], "top_k": 0})] == ["@temperature=0.5", "@temperature=1.0"]


def test_eval_prompts_accept_strings_dicts_and_chat(model_and_tok):
    _, tok = model_and_tok
    prompts = build_eval_prompts([{"prompt": "add 1 2\n", "reference": "3"},
                                  {"prompt": [{"role": "user", "content": "hi"}], "reference": "yo"}], tok)
    assert prompts.texts == ["add 1 2\n", "<|user|>hi</s><|assistant|>"]
    assert prompts.metadata == {"reference": ["3", "yo"]}
    with pytest.raises(Exception, match="'reference' is set on some prompts"):
        build_eval_prompts([{"prompt": "a", "reference": "b"}, {"prompt": "c"}], tok)


def test_builtin_metrics():
    outs, refs = ["abc", " DEF ", "x"], ["abc", "DEF", "y"]
    assert exact_match([], [], outs, reference=refs) == {"exact_match": [1.0, 1.0, 0.0]}
    assert exact_match([], [], outs) == {}
    assert distinct_n([], [], ["a b a", "a c"])["distinct_1"] == pytest.approx(3 / 5)
    assert rouge([], [], ["the cat sat"], reference=["the cat sat"])["rougeL"] == [1.0]


def test_compute_metrics_averages_lists_and_floats():
    means, columns = compute_metrics(
        [exact_match, lambda samples, prompts, outputs, **kw: {"score": 0.5}],
        samples=["pa", "pb"], prompts=["p", "p"], outputs=["a", "b"], metadata={"reference": ["a", "c"]})
    assert means == {"exact_match": 0.5, "score": 0.5} and columns == {"exact_match": [1.0, 0.0]}


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda **kw: 1 / 0, "raised ZeroDivisionError"),
        (lambda **kw: {"m": [math.nan, 1.0]}, "non-finite value for 'm' at index 0"),
        (lambda **kw: {"m": [1.0]}, "returned 1 values for 'm', expected one per output"),
        (lambda **kw: [1.0, 2.0], "must return a dict"),
        (lambda **kw: {"m": ["high", "low"]}, "non-numeric"),
    ],
)
def test_bad_metric_functions_get_clear_errors(fn, message):
    with pytest.raises(MetricError, match=message):
        compute_metrics([fn], samples=["a", "b"], prompts=["", ""], outputs=["a", "b"], metadata={})


def test_resolve_metric_by_name_or_reference():
    assert resolve_metric("exact_match") is exact_match
    assert resolve_metric("sft_core.metrics:distinct_n") is distinct_n
    with pytest.raises(MetricError, match="unknown metric 'bleu'"):
        resolve_metric("bleu")
    with pytest.raises(MetricError, match="cannot import 'sft_core.nope'"):
        resolve_metric("sft_core.nope:f")
    with pytest.raises(MetricError, match="has no function 'missing'"):
        resolve_metric("sft_core.metrics:missing")
    with pytest.raises(MetricError, match="outside the allowed module prefixes"):
        resolve_metric("os:system")
