"""Masks and batches compared against tensors written out by hand."""

import pytest
import torch

from sft_core import DataError
from sft_core.data import IGNORE_INDEX as X
from sft_core.data import build_example, collate, prepare_samples, show_mask, to_segments, truncate
from sft_core.data.batching import EpochBatchSampler, contiguous_slice, micro_batches, pack
from sft_core.embedded import build_byte_tokenizer, build_tiny_llama
from sft_core.losses import token_loss_sum


@pytest.fixture(scope="module")
def tok():
    return build_byte_tokenizer()


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_build_example_masks_prompts_and_trains_on_eos():
    input_ids, labels = build_example([[5, 6], [7, 8]], [False, True], bos_id=None, eos_id=2)
    assert input_ids == [5, 6, 7, 8, 2]
    assert labels == [X, X, 7, 8, 2]
    input_ids, labels = build_example([[5], [7], [9], [10]], [False, True, False, True], bos_id=1, eos_id=2)
    assert input_ids == [1, 5, 7, 9, 10, 2]
    assert labels == [X, X, 7, X, 10, 2]


def test_pairs_mask_prompt_tokens(tok, tmp_path):
    split = prepare_samples([["add 1 2\n", "3"]], tok, seq_length=64, truncation_side="right", cache_dir=tmp_path)
    row = split.dataset[0]
    prompt_len = len(ids(tok, "add 1 2\n"))
    assert row["labels"][:prompt_len] == [X] * prompt_len
    assert row["labels"][prompt_len:] == ids(tok, "3") + [tok.eos_token_id]
    assert row["input_ids"][-1] == tok.eos_token_id
    assert show_mask(row["input_ids"], row["labels"], tok) == "add 1 2\n[[3</s>]]"


def test_text_gets_eos_and_full_loss(tok, tmp_path):
    row = prepare_samples(["hello"], tok, seq_length=64, truncation_side="right", cache_dir=tmp_path).dataset[0]
    assert row["input_ids"] == ids(tok, "hello") + [tok.eos_token_id]
    assert row["labels"] == row["input_ids"]
    assert row["num_targets"] == len(row["input_ids"]) - 1  # the first token predicts nothing


def test_dialogue_trains_every_model_turn(tok, tmp_path):
    row = prepare_samples([["q1 ", "a1", " q2 ", "a2"]], tok, seq_length=64, truncation_side="right",
                          cache_dir=tmp_path).dataset[0]
    assert show_mask(row["input_ids"], row["labels"], tok) == "q1 [[a1]] q2 [[a2</s>]]"


def test_chat_trains_assistant_turns_only(tok, tmp_path):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "yo"}, {"role": "user", "content": "bye"},
                {"role": "assistant", "content": "ok"}]
    row = prepare_samples([{"messages": messages}], tok, seq_length=64, truncation_side="right",
                          cache_dir=tmp_path).dataset[0]
    shown = show_mask(row["input_ids"], row["labels"], tok)
    assert shown == "<|system|>be brief</s><|user|>hi</s><|assistant|>[[yo</s>]]<|user|>bye</s><|assistant|>[[ok</s>]]"


def test_chat_without_assistant_turn_is_an_error(tok):
    with pytest.raises(DataError, match="no assistant turn"):
        to_segments({"messages": [{"role": "user", "content": "hi"}]}, tok, where="samples[3]")


@pytest.mark.parametrize("sample", [["only one"], ["p", ""], ["a", "b", "c"], [1, 2], 3])
def test_malformed_pairs_name_the_sample(tok, sample):
    with pytest.raises(DataError, match=r"samples\[7\]"):
        to_segments(sample, tok, where="samples[7]")


def test_truncation_sides():
    assert truncate([1, 2, 3, 4], [X, 2, 3, 4], 3, "right") == ([1, 2, 3], [X, 2, 3], True)
    assert truncate([1, 2, 3, 4], [X, 2, 3, 4], 3, "left") == ([2, 3, 4], [2, 3, 4], True)
    assert truncate([1, 2], [X, 2], 3, "left") == ([1, 2], [X, 2], False)


def test_prompt_longer_than_seq_length_is_dropped_and_counted(tok, tmp_path):
    samples = [["x" * 30, "yes"], ["short ", "ok"], ["abc", "def"]]
    split = prepare_samples(samples, tok, seq_length=16, truncation_side="right", cache_dir=tmp_path)
    assert split.stats.rows_in == 3 and split.stats.rows_out == 2
    assert split.stats.rows_dropped == {"prompt_longer_than_seq_length": 1}
    with pytest.raises(DataError, match=r"train.seq_length=4"):
        prepare_samples([["long prompt", "c"]], tok, seq_length=4, truncation_side="right", cache_dir=tmp_path)


def test_truncation_is_counted(tok, tmp_path):
    split = prepare_samples([["p ", "c" * 40]], tok, seq_length=16, truncation_side="right", cache_dir=tmp_path)
    assert split.stats.rows_truncated == 1 and len(split.dataset[0]["input_ids"]) == 16


def test_tokenization_is_cached_by_content(tok, tmp_path):
    samples = [["a ", "b"], ["c ", "d"]]
    first = prepare_samples(samples, tok, seq_length=16, truncation_side="right", cache_dir=tmp_path)
    again = prepare_samples(samples, tok, seq_length=16, truncation_side="right", cache_dir=tmp_path)
    other = prepare_samples(samples, tok, seq_length=17, truncation_side="right", cache_dir=tmp_path)
    assert not first.stats.cached and again.stats.cached and not other.stats.cached
    assert again.dataset["input_ids"] == first.dataset["input_ids"]


def test_collate_pads_right_with_ignored_labels():
    batch = collate([[5, 6, 7], [8]], [[X, 6, 7], [8]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[X, 6, 7], [8, X, X]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]


def test_collate_pads_left_without_shifting_positions():
    batch = collate([[5, 6, 7], [8]], None, pad_id=0, padding_side="left")
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]


def test_pack_layout():
    batch = pack([[5, 6, 7], [8], [9, 10]], [[X, 6, 7], [8], [9, 10]], block_len=4, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert batch["labels"].tolist() == [[X, 6, 7, X], [X, 10, X, X]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0], [0, 1, 0, 1]]
    assert batch["attention_mask"] is None


def test_packed_loss_equals_padded_loss(tok):
    model = build_tiny_llama(0)
    rows = [ids(tok, t) for t in ["reverse abc\ncba", "upper xy\nXY", "add 1 2\n3", "hello world"]]
    labels = [[X] + r[1:] for r in rows]
    padded, _ = token_loss_sum(model, collate(rows, labels, 0), "cpu")
    packed, _ = token_loss_sum(model, pack(rows, labels, 32, 0), "cpu")
    assert torch.allclose(padded, packed, rtol=1e-5)


@pytest.mark.parametrize("block_len", [None, 64])
def test_micro_batches_split_a_batch_into_passes_with_the_same_loss(block_len):
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 250, (n,), generator=g).tolist() for n in (60, 9, 33, 41, 17, 25, 50, 5)]
    labels = [[X] + r[1:] for r in rows]
    model = build_tiny_llama(0)
    (whole_rows, whole), = micro_batches(rows, labels, 0, max_tokens=None, block_len=block_len)
    passes = micro_batches(rows, labels, 0, max_tokens=70, block_len=block_len)

    assert sorted(whole_rows) == sorted(i for pass_rows, _ in passes for i in pass_rows) == list(range(len(rows)))
    assert len(passes) >= 3
    for _, batch in passes:
        slots = batch["input_ids"].numel()
        assert slots <= 70 or batch["input_ids"].shape[0] == 1  # only a lone row or block may exceed it
    (_, roomy), = micro_batches(rows, labels, 0, max_tokens=10_000, block_len=block_len)
    for key, tensor in whole.items():  # a batch that fits in one pass is laid out as without a cap
        assert tensor is None and roomy[key] is None or torch.equal(tensor, roomy[key]), key
    loss, n = token_loss_sum(model, whole, "cpu")
    split = [token_loss_sum(model, batch, "cpu") for _, batch in passes]
    assert n == sum(k for _, k in split)
    assert torch.allclose(loss, sum(part for part, _ in split), rtol=1e-5)


def test_sampler_shards_each_global_batch_across_ranks():
    one = EpochBatchSampler(20, 8, seed=3)
    two = [EpochBatchSampler(20, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    for (pos, rows), (_, r0), (_, r1) in zip(one.iter_from(pos0 := one_pos()), two[0].iter_from(pos0),
                                              two[1].iter_from(pos0)):
        assert set(r0).isdisjoint(r1) and r0 + r1 == rows
        if pos.epoch == 2:
            break
    assert one.batches_per_epoch == 3  # 8 + 8 + a tail of 4


def one_pos():
    from sft_core.data import BatchPosition

    return BatchPosition(0, 0)


def test_sampler_order_depends_on_seed_and_epoch_only():
    s = EpochBatchSampler(50, 5, seed=1)
    assert s.epoch_order(0) == EpochBatchSampler(50, 5, seed=1).epoch_order(0)
    assert s.epoch_order(0) != s.epoch_order(1)
    assert sorted(s.epoch_order(1)) == list(range(50))


def test_length_grouped_batches_hold_similar_lengths():
    lengths = [i % 10 + 1 for i in range(200)]
    s = EpochBatchSampler(200, 10, seed=0, lengths=lengths)
    order = s.epoch_order(0)
    assert sorted(order) == list(range(200))
    spreads = [max(lengths[i] for i in order[b:b + 10]) - min(lengths[i] for i in order[b:b + 10])
               for b in range(0, 200, 10)]
    assert max(spreads) <= 1


def test_contiguous_slice_covers_everything_once():
    items = list(range(7))
    parts = [contiguous_slice(items, r, 3) for r in range(3)]
    assert parts == [[0, 1, 2], [3, 4], [5, 6]]
