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

PPO's passes over prompt + answer (the reference pass, the update's mini-batches) use the same
layout through :func:`answer_states`: the prefix once per mini-batch, its keys/values repeated
to the rows (with gradients, the repeat sums the rows' gradients into the one prefix pass).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import torch

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

MIN_PREFIX_TOKENS = 16  # below this the prefix pass costs about what it saves
STATIC_CACHE_BUCKET = 128  # a static cache's length is rounded up to this: batches of similar width share one compiled step
_UNSHAREABLE: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()  # decoders whose cache proved unshareable in answer_states
_STATIC_CACHES: "weakref.WeakKeyDictionary[torch.nn.Module, Any]" = weakref.WeakKeyDictionary()  # each model's last static cache


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


def run_prefix(model: torch.nn.Module, prefix: torch.Tensor, rows: int, **kwargs: Any) -> Any:
    """Run ``prefix`` ([1, S]) once and repeat its key/value cache to ``rows`` rows ([1, heads, S, d] ->
    [rows, heads, S, d] in every layer); ``None`` where the model's cache cannot be shared. ``kwargs`` go to
    the model's forward."""
    out = model(input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True, **kwargs)
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    if not cache_is_shareable(cache):
        return None
    cache.batch_repeat_interleave(rows)  # differentiable: the rows' gradients sum into the one prefix pass
    return cache


def static_cache(model: torch.nn.Module, filled: Any, rows: int, length: int, *, bucket: int = STATIC_CACHE_BUCKET) -> Any:
    """A transformers ``StaticCache`` for ``rows`` rows and at least ``length`` tokens, holding ``filled``'s keys/values
    (a repeated prefix, :func:`run_prefix`) when given; ``None`` when ``filled`` cannot go into this model's static
    cache (sliding-window or other non-plain layers: the caller then uses the plain batch).

    Why: a cache that grows by one token per step changes every tensor's shape every step, so a compiled
    decoding step would recompile (or, uncompiled, pay Python and kernel-launch overhead per token: what keeps
    a 7B rollout far from its bandwidth bound). A fixed-size one keeps the shapes; transformers then compiles
    the step on a GPU and replays it as a CUDA graph. The length is rounded up to ``bucket`` and never shrinks
    for a model, so later batches of similar width reuse the compiled step instead of recompiling; and while
    rows and length stay the same the cache itself is reused, zeroed in place, so its tensors keep the
    addresses a captured CUDA graph reads.
    """
    from transformers import StaticCache
    from transformers.cache_utils import StaticLayer

    last = _STATIC_CACHES.get(model)
    size = max(-(-length // bucket) * bucket, last.get_max_length() if last is not None else 0)
    device = next(model.parameters()).device
    if (last is not None and last.is_initialized and last.get_max_length() == size and last.batch_size == rows
            and last.layers[0].keys.device == device):  # a model moved to another device gets a new cache
        last.reset()
        cache = last
    else:
        cache = StaticCache(config=model.config.get_text_config(decoder=True), max_cache_len=size)
    if filled is not None and (len(filled.layers) != len(cache.layers) or any(type(layer) is not StaticLayer for layer in cache.layers)):
        return None
    _STATIC_CACHES[model] = cache
    if filled is not None:
        for layer, source in zip(cache.layers, filled.layers):
            layer.update(source.keys, source.values)  # [rows, heads, S, d] written at 0..S-1 of [rows, heads, size, d]
    return cache


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
    cache = run_prefix(model, prefix, len(rows), logits_to_keep=1)
    if cache is None:
        return None
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


def _shared_prompt_prefix(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int) -> tuple[torch.Tensor, int] | None:
    """Prompt lengths ``[B]`` and the shared prefix length ``S`` of a batch whose first ``prompt_width`` columns are
    left-padded prompts; ``None`` if they are not laid out that way. Same rule as :func:`shared_length`: every row
    keeps at least one prompt token of its own (its last prompt token's state predicts its first answer token)."""
    prompt_mask = attention_mask[:, :prompt_width].long()  # [B, P]
    lengths = prompt_mask.sum(1)  # [B] real prompt tokens, right-aligned at column P
    columns = torch.arange(prompt_width, device=input_ids.device)  # [P]
    if not torch.equal(prompt_mask, (columns[None, :] >= prompt_width - lengths[:, None]).long()):
        return None  # holes in a prompt, or right padding: not the layout this module reasons about
    shortest = int(lengths.min())
    index = (prompt_width - lengths)[:, None] + columns[None, :shortest]  # [B, m] first m real tokens of each row
    heads = input_ids.gather(1, index)  # [B, m]
    same = (heads == heads[:1]).all(0).long()  # [m]
    return lengths, min(int(same.cumprod(0).sum()), shortest - 1)


def answer_states(decoder: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_width: int,
                  *, share: bool = True, min_shared: int = MIN_PREFIX_TOKENS) -> torch.Tensor:
    """The decoder's last hidden state before each of the last ``response_width`` tokens. [B, L] x2 -> [B, R, H].

    ``input_ids`` is left-padded prompts followed by right-padded answers (generation's layout, ``L = P + R``).
    Without ``share`` (or where it cannot pay or be done) one plain padded forward, positions ``cumsum(mask) - 1``.
    With it, the rows' shared prompt prefix ``S`` runs once and the rest of the batch after it::

        [pad pad | shared | rest of prompt i | answer i, pads]   ->   [shared] once, then [pads | rest of prompt i | answer i, pads]

    Every real token keeps its position and its attention span, so the states equal the plain ones up to float
    summation order. Falls back to the plain pass for one row, a short shared part, a model whose cache cannot be
    shared (:func:`cache_is_shareable`), or a decoder in training mode (dropout would be drawn once for all rows).
    """
    prompt_width = input_ids.shape[1] - response_width  # P
    found = (_shared_prompt_prefix(input_ids, attention_mask, prompt_width)
             if share and not decoder.training and input_ids.shape[0] > 1 and decoder not in _UNSHAREABLE else None)
    cache = None
    if found is not None and found[1] >= max(min_shared, 1):
        lengths, shared = found
        first = prompt_width - int(lengths[0])
        cache = run_prefix(decoder, input_ids[:1, first:first + shared], input_ids.shape[0])  # [1, S] once -> B rows
        if cache is None:  # PPO runs many passes per step: do not run the prefix in vain again for this model
            _UNSHAREABLE.add(decoder)
    if cache is None:  # the plain pass, as before the prefix cache
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, L], as generate() numbers them
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=False).last_hidden_state  # [B, L, H]
        return hidden[:, -response_width - 1: -1]  # the state at position i predicts token i + 1
    rest = int(lengths.max()) - shared  # W: widest prompt remainder (>= 1)
    tail_ids = input_ids[:, prompt_width - rest:]  # [B, W + R] remainders right-aligned, then the answers
    tail_mask = attention_mask[:, prompt_width - rest:].clone()  # [B, W + R]
    columns = torch.arange(rest, device=input_ids.device)  # [W]
    tail_mask[:, :rest] = (columns[None, :] >= rest - (lengths - shared)[:, None]).to(tail_mask.dtype)  # hide shared tokens of short rows
    mask = torch.cat([torch.ones_like(tail_mask[:, :1]).expand(-1, shared), tail_mask], dim=1)  # [B, S + W + R]
    position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, shared:]  # [B, W + R] each token's plain position
    hidden = decoder(input_ids=tail_ids, attention_mask=mask, position_ids=position_ids, cache=cache,
                     use_cache=True).last_hidden_state  # [B, W + R, H]
    return hidden[:, -response_width - 1: -1]  # [B, R, H]
