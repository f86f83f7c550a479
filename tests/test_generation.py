"""The one batched generation: seeded per-row sampling, stopping at </Judgement>, trimming padding."""

import pytest
import torch

from nlu_helpers import data, generation
from nlu_helpers.prompts import JUDGEMENT_CLOSE
from nlu_helpers.tasks import get_task

TASK = "movie-snippets"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prompts():
    return [get_task(TASK).build_prompt(r) for r in data.load_split(TASK, "train", limit=4)]


def test_gumbel_sampler_draws_from_the_softmax_at_the_temperature():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    temperature, n = 0.8, 6000
    picks = generation.SeededGumbelSampler(range(n), temperature)(None, logits.expand(n, -1)).argmax(-1)
    frequencies = torch.bincount(picks, minlength=4).double() / n
    expected = torch.softmax(logits.double() / temperature, -1)
    assert ((frequencies - expected).abs() <= 4 * (expected * (1 - expected) / n).sqrt()).all(), (frequencies, expected)
    again = generation.SeededGumbelSampler(range(n), temperature)(None, logits.expand(n, -1)).argmax(-1)
    assert torch.equal(picks, again)  # the same seeds, the same draws
    with pytest.raises(ValueError, match="3 seeds for a batch of 2 rows"):
        generation.SeededGumbelSampler([1, 2, 3], 1.0)(None, torch.zeros(2, 4))


def test_a_rows_noise_does_not_depend_on_the_other_rows():
    scores = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    batch = generation.SeededGumbelSampler([7, 8, 9], 1.0)
    alone = generation.SeededGumbelSampler([8], 1.0)
    for _ in range(3):  # several steps: each row's generator advances on its own
        together, single = batch(None, scores), alone(None, scores[1:2])
        torch.testing.assert_close(together[1:2], single, atol=0, rtol=0)


def test_sample_seeds_are_distinct_and_deterministic():
    seeds = generation.sample_seeds(0, 5, range(64))
    assert len(set(seeds)) == 64 and all(0 <= s < 2**63 for s in seeds)
    assert seeds == generation.sample_seeds(0, 5, range(64))
    assert seeds != generation.sample_seeds(0, 6, range(64)) and seeds != generation.sample_seeds(1, 5, range(64))
    assert generation.sample_seeds(0, 5, [3]) == [seeds[3]]  # a prompt's seed is its own, whatever the batch


def test_a_prompts_answer_depends_on_its_seed_only_not_on_its_batch(model, tokenizer, prompts):
    seeds = generation.sample_seeds(0, 5, range(4))

    def answers(indices):
        out = generation.generate(model, tokenizer, [prompts[i] for i in indices], max_new_tokens=6, temperature=1.0,
                                  seeds=[seeds[i] for i in indices])
        return {i: out.response_ids[k][out.response_mask[k].bool()].tolist() for k, i in enumerate(indices)}

    whole = answers([0, 1, 2, 3])  # one process with the global batch
    assert {**answers([2, 0]), **answers([3, 1])} == whole  # two processes, other padding, other order
    assert answers([1]) == {1: whole[1]}
    assert len({tuple(v) for v in whole.values()}) > 1  # it does sample: the answers differ


def test_generation_stops_just_after_judgement_close(model, tokenizer, prompts, monkeypatch):
    """A model that always writes " Positive </Judgement> and more": the answer ends at the close tag."""
    script = tokenizer(" Positive </Judgement> and more words after it", add_special_tokens=False)["input_ids"]
    original, calls = model.forward, []

    def scripted(*args, **kwargs):  # the k-th forward call predicts the script's k-th token
        out = original(*args, **kwargs)
        logits = torch.full_like(out.logits, -1e4)
        logits[..., script[min(len(calls), len(script) - 1)]] = 0
        calls.append(1)
        out.logits = logits
        return out

    monkeypatch.setattr(model, "forward", scripted)
    out = generation.generate(model, tokenizer, prompts[:2], max_new_tokens=20, prefix_cache=False)
    assert out.texts == [" Positive </Judgement>"] * 2
    width = out.response_mask.shape[1]
    assert width < len(script) and out.response_mask.all()
    assert tokenizer.decode(out.response_ids[0]).endswith(JUDGEMENT_CLOSE)


def test_answer_length_counts_the_stop_token_and_the_closing_tag(tokenizer):
    close = tokenizer(" yes </Judgement> trailing", add_special_tokens=False)["input_ids"]
    n = generation.answer_length(close, tokenizer, set())
    assert tokenizer.decode(close[:n]).strip().endswith(JUDGEMENT_CLOSE)
    assert JUDGEMENT_CLOSE not in tokenizer.decode(close[:n - 1])
    eos = tokenizer.eos_token_id
    assert generation.answer_length([5, 6, eos, 7], tokenizer, {eos}) == 3  # the end token was generated: it counts
    assert generation.answer_length([5, 6, 7], tokenizer, {eos}) == 3
    assert generation.cut_at_close("a </Judgement> b </Judgement>") == "a </Judgement>"
    assert generation.cut_at_close("no tag") == "no tag"


def test_trim_padding_drops_columns_that_are_padding_in_every_row():
    # prompts left padded to width 4 (column 0 is padding in both rows), answers right padded to 3 (column 6 in both)
    ids = torch.tensor([[0, 11, 12, 13, 21, 22, 0], [0, 0, 14, 15, 23, 0, 0]])
    attn = torch.tensor([[0, 1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 0, 0]])
    response = torch.tensor([[1, 1, 0], [1, 0, 0]])
    trimmed_ids, trimmed_attn, width = generation.trim_padding(ids, attn, response)
    assert width == 2
    assert trimmed_ids.tolist() == [[11, 12, 13, 21, 22], [0, 14, 15, 23, 0]]
    assert trimmed_attn.tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 1, 0]]
    # no answer tokens at all: one column kept so shapes stay valid
    _, _, width = generation.trim_padding(ids, attn, torch.zeros_like(response))
    assert width == 1
