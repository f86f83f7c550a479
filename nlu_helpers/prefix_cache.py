"""Compute a batch's shared prompt once: the longest token prefix all rows share.

Every prompt of a task starts with the same text (the task part, the answer-format line,
for few-shot the same demonstrations). The prefix is run once at batch size 1, its key/value
cache repeated to the batch, and each row's remainder fed after it, left-padded *after* the
shared part::

    today:   [pad pad | shared ... | rest of row i]       (left padded, every row runs all of it)
    here:    [shared ... | pad pad | rest of row i]       (shared part once, from the cache)

Position ids come from the attention mask (``cumsum - 1``), so every real token keeps the
position it has today and never attends to a pad: each row computes what it computes today
(up to float summation order). Where the model's cache is not a plain per-layer key/value
cache (sliding windows, linear-attention/recurrent states) or the shared part is short, the
caller falls back to the plain left-padded batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Sequence

import torch

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

MIN_PREFIX_TOKENS = 16  # below this the prefix pass costs about what it saves


class PrefixBatch(NamedTuple):
    """A batch laid out as shared prefix + left-padded remainders. ``S`` shared, ``W`` total width."""

    input_ids: torch.Tensor  # [B, W] prefix, pads, remainder (pads are the pad token)
    attention_mask: torch.Tensor  # [B, W] 0 on the pads between the prefix and each remainder
    position_ids: torch.Tensor  # [B, W] cumsum(mask) - 1, 0 on pads: the positions each token has today
    cache: object  # the prefix's cache, repeated to B rows (a transformers DynamicCache)
    shared: int  # S: tokens computed once


def shared_length(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest common token prefix of ``rows``, leaving every row at least one token of its own
    (the last prompt token must run with the batch: its output is the first prediction)."""
    if not rows:
        return 0
    first, limit = rows[0], min(len(r) for r in rows) - 1
    n = 0
    while n < limit and all(r[n] == first[n] for r in rows):
        n += 1
    return max(n, 0)


def cache_is_shareable(cache) -> bool:
    """Only a plain dynamic key/value cache can be repeated along the batch and grown per row."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    return (isinstance(cache, DynamicCache) and len(cache.layers) > 0
            and all(type(layer) is DynamicLayer for layer in cache.layers))


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each token from the mask: ``cumsum - 1`` with 0 on pads ([B, W] -> [B, W])."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


def build(
    model: torch.nn.Module,
    tokenizer: "PreTrainedTokenizerBase",
    rows: Sequence[Sequence[int]],
    *,
    min_shared: int = MIN_PREFIX_TOKENS,
) -> PrefixBatch | None:
    """Run the shared prefix of the tokenized prompts ``rows`` once and lay the batch out behind it;
    ``None`` (use the plain batch) when the batch has one row, shares under ``min_shared`` tokens,
    or the model's cache cannot be shared."""
    shared = shared_length(rows)
    if len(rows) < 2 or shared < max(min_shared, 1):
        return None
    device = next(model.parameters()).device
    prefix = torch.tensor([list(rows[0][:shared])], device=device)  # [1, S]
    # the prefix needs no logits: keep one position so the LM head costs nothing
    out = model(input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True, logits_to_keep=1)
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    if not cache_is_shareable(cache):
        return None
    cache.batch_repeat_interleave(len(rows))  # [1, heads, S, d] -> [B, heads, S, d] in every layer
    width = max(len(r) for r in rows) - shared
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(rows), shared + width), pad, dtype=torch.long)  # [B, W]
    mask = torch.zeros_like(input_ids)
    input_ids[:, :shared], mask[:, :shared] = prefix[0].cpu(), 1
    for i, r in enumerate(rows):
        rest = list(r[shared:])
        if rest:
            input_ids[i, shared + width - len(rest):] = torch.tensor(rest)
            mask[i, shared + width - len(rest):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    return PrefixBatch(input_ids=input_ids, attention_mask=mask, position_ids=positions(mask), cache=cache, shared=shared)
