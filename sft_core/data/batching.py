"""Batches: a seeded, resumable order over rows; padding or packing them; splitting them into passes.

The order is a pure function of (seed, epoch, batch index), so resuming at step N replays the
same data, with no sampler state to save. With several processes each global batch is split
into contiguous per-rank slices, so N ranks x batch B sees exactly the rows 1 rank x batch N*B sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import torch

from sft_core.data.masking import IGNORE_INDEX


@dataclass(frozen=True)
class BatchPosition:
    epoch: int
    batch_in_epoch: int


class EpochBatchSampler:
    """Yields (position, row indices for this rank), shuffled anew each epoch with the seed.

    With ``lengths``, rows are grouped by length: the shuffled order is cut into mega-batches of
    ``MEGABATCH`` global batches, each sorted by length, then the batches are shuffled again.
    Batches then hold rows of similar length, so dynamic padding wastes little compute.
    """

    MEGABATCH = 50

    def __init__(self, num_rows: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, lengths: Sequence[int] | None = None):
        if num_rows < world_size:
            raise ValueError(f"{num_rows} rows cannot be split across {world_size} processes")
        if lengths is not None and len(lengths) != num_rows:
            raise ValueError(f"got {len(lengths)} lengths for {num_rows} rows")
        self.lengths = lengths
        self.num_rows = num_rows
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.num_rows, self.global_batch_size)
        return full + (rest >= self.world_size)  # a tail too small to give every rank a row is dropped

    def epoch_order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_rows))
        g = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.num_rows, generator=g).tolist()
        if self.lengths is None:
            return order
        size = self.global_batch_size
        mega = size * self.MEGABATCH
        grouped = [i for m in range(0, len(order), mega)
                   for i in sorted(order[m : m + mega], key=lambda r: -self.lengths[r])]
        # Full batches are shuffled among themselves; a short tail stays last so it can be dropped.
        n_full = len(grouped) // size
        batch_order = torch.randperm(n_full, generator=g).tolist()
        return [i for b in batch_order for i in grouped[b * size : (b + 1) * size]] + grouped[n_full * size :]

    def iter_from(self, start: BatchPosition) -> Iterator[tuple[BatchPosition, list[int]]]:
        epoch, b = start.epoch, start.batch_in_epoch
        while True:
            order = self.epoch_order(epoch)
            for i in range(b, self.batches_per_epoch):
                rows = order[i * self.global_batch_size : (i + 1) * self.global_batch_size]
                yield BatchPosition(epoch, i), contiguous_slice(rows, self.rank, self.world_size)
            epoch, b = epoch + 1, 0


def contiguous_slice(items: list, rank: int, world_size: int) -> list:
    """Rank ``rank``'s contiguous share of ``items``; the first ``len % world_size`` ranks get one more."""
    per_rank, extra = divmod(len(items), world_size)
    start = rank * per_rank + min(rank, extra)
    return items[start : start + per_rank + (rank < extra)]


def collate(
    input_ids: list[list[int]],
    labels: list[list[int]] | None,
    pad_id: int,
    padding_side: Literal["left", "right"] = "right",
) -> dict[str, torch.Tensor]:
    """Pad to the longest row in this batch (not to seq_length). Labels on padding are -100.

    position_ids count real tokens only, so left padding does not shift positions.
    Example (right padding, pad_id=0):
        input_ids [[5, 6, 7], [8]], labels [[-100, 6, 7], [8]]
        -> input_ids [[5, 6, 7], [8, 0, 0]], labels [[-100, 6, 7], [8, -100, -100]],
           attention_mask [[1, 1, 1], [1, 0, 0]], position_ids [[0, 1, 2], [0, 0, 0]]
    """
    longest = max(len(r) for r in input_ids)
    ids = torch.full((len(input_ids), longest), pad_id, dtype=torch.long)
    padded_labels = torch.full((len(input_ids), longest), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(input_ids), longest), dtype=torch.long)
    for i, row in enumerate(input_ids):
        n = len(row)
        span = slice(longest - n, longest) if padding_side == "left" else slice(0, n)
        ids[i, span] = torch.tensor(row)
        if labels is not None:
            padded_labels[i, span] = torch.tensor(labels[i])
        mask[i, span] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "labels": padded_labels, "attention_mask": mask, "position_ids": position_ids}


def pack_blocks(lengths: Sequence[int], block_len: int) -> list[list[int]]:
    """First-fit decreasing: the row indices of each block of at most ``block_len`` tokens. No row is split."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    blocks: list[list[int]] = []
    fill: list[int] = []
    for i in order:
        slot = next((b for b, used in enumerate(fill) if used + lengths[i] <= block_len), None)
        if slot is None:
            blocks.append([i])
            fill.append(lengths[i])
        else:
            blocks[slot].append(i)
            fill[slot] += lengths[i]
    return blocks


def layout_blocks(input_ids: list[list[int]], labels: list[list[int]], blocks: list[list[int]],
                  pad_id: int) -> dict[str, torch.Tensor]:
    """Tensors for packed blocks (lists of row indices), as wide as the fullest block."""
    width = max(sum(len(input_ids[i]) for i in rows) for rows in blocks)
    ids = torch.full((len(blocks), width), pad_id, dtype=torch.long)
    packed_labels = torch.full((len(blocks), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(blocks), width), dtype=torch.long)
    for b, rows in enumerate(blocks):
        col = 0
        for i in rows:
            n = len(input_ids[i])
            ids[b, col : col + n] = torch.tensor(input_ids[i])
            packed_labels[b, col + 1 : col + n] = torch.tensor(labels[i][1:])
            position_ids[b, col : col + n] = torch.arange(n)
            col += n
        position_ids[b, col:] = torch.arange(width - col)  # padding forms its own (ignored) segment
    return {"input_ids": ids, "labels": packed_labels, "attention_mask": None, "position_ids": position_ids}


def pack(input_ids: list[list[int]], labels: list[list[int]], block_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Lay a batch's rows out in blocks of at most ``block_len`` tokens, first-fit decreasing.

    No row is split. position_ids restart at 0 for every row, which is how the model's attention
    mask keeps each row to itself (attention_mask is None), so the loss is that of the padded
    batch, with far less padding. A row's first label is never a target: in a packed block the
    token before it belongs to another row.
    Example (block_len=4): rows [5, 6, 7], [8], [9, 10] -> blocks [[5, 6, 7, 8], [9, 10, 0, 0]],
        position_ids [[0, 1, 2, 0], [0, 1, 0, 1]]
    """
    return layout_blocks(input_ids, labels, pack_blocks([len(r) for r in input_ids], block_len), pad_id)


def micro_batches(
    input_ids: list[list[int]],
    labels: list[list[int]],
    pad_id: int,
    *,
    max_tokens: int | None,
    block_len: int | None = None,
    padding_side: Literal["left", "right"] = "right",
    max_rows: int | None = None,
) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
    """One batch as forward/backward passes of at most ``max_tokens`` token slots (padding included).

    The trainer sums the passes' gradients and divides by the batch's target count, so the update
    is the batch's; only the activations held at once shrink. With ``block_len`` the rows are packed
    first (see `pack`) and whole blocks are grouped; without, rows of similar length are grouped
    and each pass is padded to its own longest row. A block or row wider than ``max_tokens`` is a
    pass of its own. ``max_tokens=None``: one pass. Returns (row indices, tensors) per pass.
    ``max_rows`` (trlX's minibatch_size) instead cuts the rows, in order, into passes of that many
    rows, each packed (or padded) on its own; ``max_tokens`` is then not applied.
    Example (max_rows=2): rows [r0, r1, r2, r3] -> passes [r0, r1], [r2, r3]
    """
    n = len(input_ids)
    if max_rows:
        passes = [_units(list(range(start, min(start + max_rows, n))), input_ids, block_len)
                  for start in range(0, n, max_rows)]
    else:
        units = _units(list(range(n)), input_ids, block_len)
        widths = [sum(len(input_ids[i]) for i in unit) for unit in units]
        groups = _fill_passes(widths, max_tokens) if max_tokens else [list(range(len(units)))]
        passes = [[units[u] for u in group] for group in groups]
    out = []
    for pass_units in passes:
        rows = [i for unit in pass_units for i in unit]
        if block_len:
            batch = layout_blocks(input_ids, labels, pass_units, pad_id)
        else:
            batch = collate([input_ids[i] for i in rows], [labels[i] for i in rows], pad_id, padding_side)
        out.append((rows, batch))
    return out


def _units(rows: list[int], input_ids: list[list[int]], block_len: int | None) -> list[list[int]]:
    """``rows`` as the units a pass is made of: packed blocks of row indices, or one row each."""
    if not block_len:
        return [[i] for i in rows]
    return [[rows[j] for j in block] for block in pack_blocks([len(input_ids[i]) for i in rows], block_len)]


def _fill_passes(widths: list[int], max_tokens: int) -> list[list[int]]:
    """Group units, widest first, while (units in the pass) x (its widest unit) fits in max_tokens.

    Within a pass the units keep their order, so a batch that fits in one pass is laid out (and
    summed, to the last bit) exactly as without splitting.
    """
    groups: list[list[int]] = []
    for u in sorted(range(len(widths)), key=lambda u: -widths[u]):
        if groups and (len(groups[-1]) + 1) * widths[groups[-1][0]] <= max_tokens:
            groups[-1].append(u)
        else:
            groups.append([u])
    return [sorted(group) for group in groups]
