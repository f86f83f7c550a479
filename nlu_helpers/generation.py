"""The one batched generation the workbook uses: evaluation and PPO rollouts alike.

A batch of prompts (left-padded) goes through ``model.generate`` once; each answer ends at
the token that completes ``</Judgement>`` or at the first end-of-sequence token, and
whatever a row produced after that is padding. Greedy for evaluation; for PPO each row
is sampled from its own seed (:class:`SeededGumbelSampler`), so an answer does not depend
on the other prompts in its batch nor on how many processes share the batch. The prompts'
shared token prefix (the task part, the demonstrations) runs once and its cache serves every
row (:mod:`nlu_helpers.prefix_cache`; ``prefix_cache=False`` turns it off). ``static_cache=True``
decodes into a fixed-size key/value cache instead of one that grows each step: the shapes then
stay the same from step to step, so on a GPU transformers compiles the decoding step and replays
it as a CUDA graph (the 7B PPO rollout's per-token Python and launch overhead gone).
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import TYPE_CHECKING, Iterator, NamedTuple, Sequence

import torch

from nlu_helpers import prefix_cache as prefix_cache_lib
from nlu_helpers.prompts import JUDGEMENT_CLOSE

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase


class Generation(NamedTuple):
    """One generated batch. ``B`` rows, ``P`` prompt width (left padded), ``R`` answer width (right padded)."""

    input_ids: torch.Tensor  # [B, P+R] prompt + answer; answer padding is the pad token
    attention_mask: torch.Tensor  # [B, P+R]
    response_mask: torch.Tensor  # [B, R] 1 on each answer's tokens
    texts: list[str]  # each answer decoded, cut just after its first </Judgement>
    states: torch.Tensor | None  # [B, R, H] the state that entered the LM head before each answer token (keep_states)

    @property
    def response_ids(self) -> torch.Tensor:  # [B, R]
        return self.input_ids[:, -self.response_mask.shape[1]:]


class SeededGumbelSampler:
    """A logits processor that makes greedy decoding sample, each row from its own seed.

    Gumbel-max trick: with ``g ~ Gumbel(0, 1)`` drawn independently per vocabulary entry,
    ``argmax(logits / T + g)`` is an exact sample from ``softmax(logits / T)``. Row ``i``
    draws its noise from a generator seeded with ``seeds[i]``: one process with 32 prompts
    and four with 8 each draw the same answers.
    """

    def __init__(self, seeds: Sequence[int], temperature: float):
        self.seeds = [int(s) for s in seeds]
        self.temperature = temperature
        self.generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:  # scores: [B, V]
        if self.generators is None:
            if len(self.seeds) != scores.shape[0]:
                raise ValueError(f"{len(self.seeds)} seeds for a batch of {scores.shape[0]} rows; give one seed per prompt")
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        uniform = torch.stack([torch.rand(scores.shape[1], generator=g, device=scores.device) for g in self.generators])  # [B, V]
        gumbel = -torch.log(-torch.log(uniform.clamp(min=torch.finfo(uniform.dtype).tiny)))  # [B, V]
        return scores.float() / self.temperature + gumbel


def sample_seeds(seed: int, step: int, indices: Sequence[int]) -> list[int]:
    """One sampling seed per prompt from (run seed, step, the prompt's index in the global batch)."""
    return [int.from_bytes(hashlib.blake2b(f"{seed}:{step}:{i}".encode(), digest_size=8).digest(), "little") >> 1 for i in indices]


def answer_length(tokens: Sequence[int], tokenizer: "PreTrainedTokenizerBase", stop_ids: set[int]) -> int:
    """How many generated tokens belong to the answer: up to the one that completes ``</Judgement>``
    or the first end-of-sequence token (it was generated too, so it counts), else all of them."""
    length = len(tokens)
    for k, token in enumerate(tokens, start=1):
        if token in stop_ids:
            length = k
            break
    if JUDGEMENT_CLOSE in tokenizer.decode(tokens[:length], skip_special_tokens=True):
        for k in range(1, length + 1):
            if JUDGEMENT_CLOSE in tokenizer.decode(tokens[:k], skip_special_tokens=True):
                return k
    return length


def cut_at_close(text: str) -> str:
    """``text`` up to and including its first ``</Judgement>`` (all of it when there is none)."""
    end = text.find(JUDGEMENT_CLOSE)
    return text[: end + len(JUDGEMENT_CLOSE)] if end >= 0 else text


def trim_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Drop the columns that are padding in every row (leading prompt pads, trailing answer pads). -> [b, l] x2, width."""
    width = int(response_mask.sum(0).nonzero().max()) + 1 if response_mask.any() else 1
    cut = response_mask.shape[1] - width
    if cut:
        input_ids, attention_mask = input_ids[:, :-cut], attention_mask[:, :-cut]
    first = int(attention_mask.sum(0).nonzero().min())
    return input_ids[:, first:], attention_mask[:, first:], width


@contextlib.contextmanager
def _lm_head_inputs(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Keep the last position's input to the LM head at every ``generate`` step ([B, H] each).

    Generation already runs the model over the prompt and every answer token; the state
    it fed the LM head before answer token t is the state a forward pass over prompt +
    answer has before token t. PPO turns these into the sampling policy's log-probs and
    values instead of running the policy over the batch a second time.
    """
    states: list[torch.Tensor] = []
    hook = model.get_output_embeddings().register_forward_hook(lambda _m, inputs, _out: states.append(inputs[0][:, -1].detach()))
    try:
        yield states
    finally:
        hook.remove()


def stop_token_ids(model: torch.nn.Module, tokenizer: "PreTrainedTokenizerBase") -> list[int]:
    """The tokenizer's end-of-sequence token and every one the model's generation config names."""
    eos = model.generation_config.eos_token_id if getattr(model, "generation_config", None) else None
    ids = {tokenizer.eos_token_id} | set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    ids.discard(None)
    return sorted(ids)


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    tokenizer: "PreTrainedTokenizerBase",
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    seeds: Sequence[int] | None = None,
    keep_states: bool = False,
    prefix_cache: bool = True,
    static_cache: bool = False,
) -> Generation:
    """Answer every prompt in one batched ``generate``, stopping at ``</Judgement>``.

    Greedy by default. ``do_sample`` samples the full distribution (top_k 0, top_p 1) from
    torch's global RNG; ``seeds`` (one per prompt) samples each row from its own seed
    instead. ``keep_states`` also returns the states the LM head saw (see :func:`_lm_head_inputs`).
    ``prefix_cache`` runs the prompts' shared token prefix once (:mod:`nlu_helpers.prefix_cache`);
    the returned ``input_ids`` keep the plain left-padded layout either way. ``static_cache`` decodes
    into a fixed-size cache (:func:`nlu_helpers.prefix_cache.static_cache`; compiled on CUDA by
    transformers); the answers are the same, and ``keep_states`` then runs one forward pass over
    prompt + answer instead of hooking the LM head (a compiled step's outputs are reused buffers).
    """
    from transformers import GenerationConfig, LogitsProcessorList

    if tokenizer.padding_side != "left":
        raise ValueError("the tokenizer must pad on the left for batched generation; use models.load_tokenizer")
    device = next(model.parameters()).device
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True).to(device)
    prompt_ids, prompt_mask = batch["input_ids"], batch["attention_mask"]  # [B, P]
    stop_ids = stop_token_ids(model, tokenizer)
    if seeds is not None:  # Gumbel noise on greedy decoding: an exact sample, one generator per row
        sampling, processors = dict(do_sample=False), [SeededGumbelSampler(seeds, temperature)]
    elif do_sample:
        sampling, processors = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0), []
    else:
        sampling, processors = dict(do_sample=False), []
    # built from scratch: no sampling defaults inherited from the model
    config = GenerationConfig(**sampling, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=stop_ids, stop_strings=[JUDGEMENT_CLOSE])
    shared = None
    if prefix_cache:  # the shared prefix runs here, before the state hook: its states are no answer's
        rows = [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids, prompt_mask)]
        shared = prefix_cache_lib.build(model, tokenizer, rows)
    # [shared | pads | rest] from the prefix's cache, or the plain left-padded batch; both [B, P]
    inputs = (dict(input_ids=shared.input_ids, attention_mask=shared.attention_mask, cache=shared.cache) if shared is not None
              else dict(input_ids=prompt_ids, attention_mask=prompt_mask))
    if static_cache:  # the same keys/values (the prefix's, if shared) in a cache whose size never changes
        cache = prefix_cache_lib.static_cache(model, inputs.get("cache"), len(prompts), inputs["input_ids"].shape[1] + max_new_tokens)
        if cache is None:  # this model's static cache cannot hold the shared prefix: the plain batch
            inputs = dict(input_ids=prompt_ids, attention_mask=prompt_mask)
            cache = prefix_cache_lib.static_cache(model, None, len(prompts), prompt_ids.shape[1] + max_new_tokens)
        inputs["cache"] = cache
    with _lm_head_inputs(model) if keep_states and not static_cache else contextlib.nullcontext() as states:
        output = model.generate(**inputs, generation_config=config,
                                logits_processor=LogitsProcessorList(processors), tokenizer=tokenizer)
    generated = output[:, prompt_ids.shape[1]:]  # [B, R'] R' <= max_new_tokens
    lengths = [answer_length(row.tolist(), tokenizer, set(stop_ids)) for row in generated.cpu()]
    width = max(lengths)
    response = generated[:, :width].clone()  # [B, R]
    response_mask = (torch.arange(width, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]).long()  # [B, R]
    response[response_mask == 0] = tokenizer.pad_token_id
    texts = [cut_at_close(tokenizer.decode(response[i, :n].tolist(), skip_special_tokens=True)) for i, n in enumerate(lengths)]
    input_ids, attention_mask = torch.cat([prompt_ids, response], dim=1), torch.cat([prompt_mask, response_mask], dim=1)
    if keep_states and static_cache:  # one pass over prompt + answer: the states the hook would have kept
        decoder = getattr(model, "get_base_model", lambda: model)().get_decoder()
        states = prefix_cache_lib.answer_states(decoder, input_ids, attention_mask, width, share=prefix_cache)  # [B, R, H]
    elif keep_states:
        states = torch.stack(states[:width], dim=1)  # [B, R, H]
    return Generation(input_ids=input_ids, attention_mask=attention_mask, response_mask=response_mask, texts=texts,
                      states=states if keep_states else None)
