"""The evaluation engine: one place where every notebook measures a model on a task.

Two modes, reported side by side:

- ``"generate"`` (the paper): batched generation with left padding and the KV cache,
  greedy or sampled, stopped at ``</Judgement>``; the text is parsed with the task's
  parser. Unparseable answers are counted, never replaced (unless you ask for the
  authors' random fill-in, which is then reported *beside* the honest numbers).
- ``"score"`` (rank classification): the log-likelihood of every answer after the
  prompt, the best one wins. A model can always be read this way, so it separates
  "does not know" from "does not follow the answer format".

Prompts are sorted by length before batching so little compute goes to padding.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from nlu_helpers import generation
from nlu_helpers import metrics as metrics_lib
from nlu_helpers import prefix_cache as prefix_cache_lib
from nlu_helpers.parsing import parse_answer
from nlu_helpers.tasks import Task, get_task, record_candidates

Mode = Literal["generate", "score"]
MODES = ("generate", "score")
CONTENT_FREE = ("N/A", "", "[MASK]")  # contextual calibration's content-free inputs (Zhao et al., 2021)
STSB_SCORES = tuple(range(6))  # scoring mode reads STS-B as the expected value over 0..5


# ----------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------

@dataclass
class EvalResult:
    """What one evaluation measured; ``to_dict`` is the results-file record."""

    task: str
    split: str | None
    model: str | None
    adapter: str | None
    mode: str
    k: int
    metrics: dict[str, float]
    unparseable: int
    n: int
    seconds: float
    examples_per_s: float
    ci: dict[str, list[float]]
    label_share: dict[str, dict[str, float]]
    settings: dict[str, Any]
    metrics_random_fill: dict[str, float] | None = None
    calibrated: bool = False
    predictions: list[dict] = field(default_factory=list, repr=False)

    @property
    def main(self) -> float:
        return metrics_lib.main_score(self.task, self.metrics)

    def to_dict(self) -> dict:
        record = asdict(self)
        record.pop("predictions")
        return record


# ----------------------------------------------------------------------------------------
# Model calls
# ----------------------------------------------------------------------------------------

def _fit_message(error: BaseException, batch_size: int) -> str | None:
    text = str(error).lower()
    if isinstance(error, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text:
        return (
            f"batch_size={batch_size} does not fit in memory; try batch_size={max(1, batch_size // 2)} "
            "(or shorter prompts: fewer shots, a smaller max length)"
        )
    return None


def _batches(order: Sequence[int], batch_size: int) -> Iterable[list[int]]:
    for start in range(0, len(order), batch_size):
        yield list(order[start:start + batch_size])


def _by_length(tokenizer, prompts: Sequence[str]) -> list[int]:
    """Indices of ``prompts``, longest first: padding waste is smallest and OOM shows up at once."""
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=True)["input_ids"]]
    return sorted(range(len(prompts)), key=lambda i: -lengths[i])


def _encode(tokenizer, texts: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
    if tokenizer.padding_side != "left":
        raise ValueError("the tokenizer must pad on the left for batched decoding; use models.load_tokenizer")
    batch = tokenizer(list(texts), return_tensors="pt", padding=True)
    return {key: value.to(device) for key, value in batch.items()}


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def generate_texts(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    progress: bool = True,
    prefix_cache: bool = True,
) -> list[str]:
    """What the model writes after each prompt, cut just after the first ``</Judgement>``
    (:func:`nlu_helpers.generation.generate` over length-sorted batches; ``prefix_cache``: each
    batch's shared prompt prefix runs once)."""
    texts: list[str] = [""] * len(prompts)
    if do_sample:
        torch.manual_seed(seed)
    bar = tqdm(total=len(prompts), desc="generate", unit="ex", disable=not progress)
    for batch in _batches(_by_length(tokenizer, prompts), batch_size):
        try:
            answers = generation.generate(model, tokenizer, [prompts[i] for i in batch], max_new_tokens=max_new_tokens,
                                          do_sample=do_sample, temperature=temperature, prefix_cache=prefix_cache).texts
        except (torch.OutOfMemoryError, RuntimeError) as error:
            message = _fit_message(error, batch_size)
            if message:
                raise RuntimeError(message) from error
            raise
        for i, text in zip(batch, answers):
            texts[i] = text
        bar.update(len(batch))
    bar.close()
    return texts


@torch.inference_mode()
def score_continuations(
    model,
    tokenizer,
    prompts: Sequence[str],
    continuations: Sequence[str],
    *,
    batch_size: int = 16,
    progress: bool = True,
    prefix_cache: bool = True,
) -> torch.Tensor:
    """Log-likelihood of each continuation after each prompt: a ``[len(prompts), len(continuations)]`` tensor.

    When every continuation is one token and they differ, one forward pass over the
    prompt gives all scores. Otherwise the prompt is run once, its KV cache kept, and
    each continuation is scored on top of it (the cache is cropped back after each).
    ``prefix_cache`` runs the batch's shared token prefix once (:mod:`nlu_helpers.prefix_cache`).
    """
    device = _device(model)
    conts = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
    if any(len(c) == 0 for c in conts):
        raise ValueError(f"a continuation tokenizes to nothing: {list(continuations)}")
    single_token = all(len(c) == 1 for c in conts) and len({c[0] for c in conts}) == len(conts)
    scores = torch.empty(len(prompts), len(conts), dtype=torch.float32)
    order = _by_length(tokenizer, prompts)
    bar = tqdm(total=len(prompts), desc="score", unit="ex", disable=not progress)
    for batch in _batches(order, batch_size):
        inputs = _encode(tokenizer, [prompts[i] for i in batch], device)
        try:
            shared = None
            if prefix_cache:  # [shared | pads | rest]: the shared part from one batch-1 pass's cache
                tokens = [ids[m.bool()].tolist() for ids, m in zip(inputs["input_ids"], inputs["attention_mask"])]
                shared = prefix_cache_lib.build(model, tokenizer, tokens)
            if shared is not None:
                inputs = {"input_ids": shared.input_ids[:, shared.shared:], "attention_mask": shared.attention_mask,
                          "cache": shared.cache}
            mask = inputs["attention_mask"]
            positions = prefix_cache_lib.positions(mask)[:, -inputs["input_ids"].shape[1]:]  # [B, new tokens]
            # logits only at the last prompt position: the LM head over every position would cost
            # 2 * hidden * vocab FLOPs per token for nothing
            out = model(**inputs, position_ids=positions, use_cache=not single_token or shared is not None, logits_to_keep=1)
            first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # [B, vocab]
            batch_scores = torch.stack([first[:, c[0]] for c in conts], dim=1)  # [B, C]
            if not single_token:
                cache = out.cache
                last_pos = positions[:, -1:]
                for j, cont in enumerate(conts):
                    if len(cont) == 1:
                        continue
                    rest = torch.tensor(cont, device=device).expand(len(batch), -1)  # [B, L]
                    step = model(
                        input_ids=rest[:, :-1],
                        attention_mask=torch.cat([mask, torch.ones_like(rest[:, :-1])], dim=1),
                        position_ids=last_pos + 1 + torch.arange(rest.shape[1] - 1, device=device),
                        cache=cache,
                        use_cache=True,
                    )
                    logp = torch.log_softmax(step.logits.float(), dim=-1)  # [B, L-1, vocab]
                    batch_scores[:, j] += logp.gather(-1, rest[:, 1:, None]).squeeze(-1).sum(-1)
                    cache.crop(-(len(cont) - 1))  # back to the prompt only
        except (torch.OutOfMemoryError, RuntimeError) as error:
            message = _fit_message(error, batch_size)
            if message:
                raise RuntimeError(message) from error
            raise
        scores[batch] = batch_scores.cpu()
        bar.update(len(batch))
    bar.close()
    return scores


# ----------------------------------------------------------------------------------------
# Task plumbing: rows -> prompts -> predictions
# ----------------------------------------------------------------------------------------

def _rows(rows) -> list[dict]:
    return [dict(row) for row in rows]


def _unit_rows(task: Task, rows: list[dict]) -> list[dict]:
    """The rows the model judges: ReCoRD queries become one row per candidate entity."""
    if task.kind != "record":
        return rows
    expanded = []
    for query_index, row in enumerate(rows):
        for candidate in record_candidates(row):
            candidate["query_index"] = query_index
            expanded.append(candidate)
    return expanded


def _continuations(task: Task) -> list[str]:
    if task.kind == "regression":
        return [f" {s}" for s in STSB_SCORES]
    return [f" {word}" for word in task.answer_words]


def _content_free_prompts(task: Task, template_row: Mapping, shots: Sequence[Mapping], answer_format: str) -> list[str]:
    """Prompts whose instance carries no content: the model's answer to them is pure bias."""
    prompts = []
    for blank in CONTENT_FREE:
        row = dict(template_row)
        for key, value in template_row.items():
            if not isinstance(value, str) or key == "label":
                continue
            trial = dict(row, **{key: blank})
            try:
                task.render(trial)
            except (ValueError, KeyError):  # e.g. COPA's "cause"/"effect" must stay
                continue
            row = trial
        prompts.append(task.build_prompt(row, shots, answer_format))
    return prompts


def content_free_probabilities(
    model, tokenizer, task: Task | str, template_row: Mapping, shots: Sequence[Mapping] = (),
    answer_format: str = "options", *, batch_size: int = 16,
) -> torch.Tensor:
    """Label probabilities on each content-free prompt (same demonstrations, instance blanked), one
    row per input of :data:`CONTENT_FREE`: ``[len(CONTENT_FREE), C]``. Their mean is the bias
    contextual calibration divides out."""
    task = get_task(task)
    cf = score_continuations(model, tokenizer, _content_free_prompts(task, template_row, shots, answer_format),
                             _continuations(task), batch_size=batch_size, progress=False)  # [I, C] log-likelihoods
    return torch.softmax(cf, dim=-1)


def calibrate_scores(scores: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Contextual calibration (Zhao et al., 2021): ``log p(label | x) - log bias``, i.e. the label
    probabilities divided by the bias ``[C]`` (``W = diag(bias)^-1``, ``b = 0``). ``[N, C] -> [N, C]``."""
    return torch.log_softmax(scores, dim=-1) - torch.log(bias)


def label_share(task: Task, predictions: Sequence, references: Sequence) -> dict[str, dict[str, float]]:
    """Share of each label among predictions and among gold labels (label bias, made visible)."""
    if task.kind != "classification":
        return {}
    n = len(predictions)
    predicted, gold = Counter(predictions), Counter(references)
    share = {
        word: {"predicted": predicted.get(i, 0) / n, "gold": gold.get(i, 0) / n}
        for i, word in enumerate(task.answer_words)
    }
    share["unparseable"] = {"predicted": predicted.get(None, 0) / n, "gold": 0.0}
    return share


def bootstrap_ci(
    task: Task | str,
    predictions: Sequence,
    references: Sequence,
    *,
    groups: Sequence | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, list[float]]:
    """Percentile bootstrap confidence intervals for every metric of the task.

    With ``groups`` (MultiRC questions, AX-g pairs) whole groups are resampled, so
    the interval respects the metric's own unit.
    """
    task = get_task(task)
    if n_resamples <= 0:
        return {}
    rng = np.random.default_rng(seed)
    units = list(dict.fromkeys(groups)) if groups is not None else list(range(len(predictions)))
    members: dict[Any, list[int]] = {}
    if groups is not None:
        for i, g in enumerate(groups):
            members.setdefault(g, []).append(i)
    samples: dict[str, list[float]] = {}
    for _ in range(n_resamples):
        picked = rng.integers(0, len(units), len(units))
        if groups is None:
            index = picked.tolist()
            new_groups = None
        else:
            index, new_groups = [], []
            for draw, u in enumerate(picked):
                index += members[units[u]]
                new_groups += [draw] * len(members[units[u]])
        values = metrics_lib.compute(
            task, [predictions[i] for i in index], [references[i] for i in index], groups=new_groups
        )
        for name in task.metrics:
            samples.setdefault(name, []).append(float(values[name]))
    tail = (1 - level) / 2 * 100
    return {name: [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))] for name, v in samples.items()}


class NonFiniteModel(ValueError):
    """The model's adapter weights or its scores hold NaN/inf: its results would look normal and mean nothing."""


def _check_finite_weights(model, what: str) -> None:
    """Refuse NaN/inf in the adapter (LoRA) and trainable weights before evaluating: cheap (a small
    share of the weights), and a diverged adapter otherwise yields plausible-looking metrics."""
    bad = [name for name, p in model.named_parameters()
           if ("lora_" in name or p.requires_grad) and p.is_floating_point() and not bool(torch.isfinite(p).all())]
    if bad:
        raise NonFiniteModel(
            f"{what}: the model's weights are not finite (NaN or inf in {len(bad)} adapter/trainable tensors, e.g. "
            f"{bad[0]}); it comes from a training run that diverged: train again (lower learning rate) or load an earlier checkpoint"
        )


def _check_finite_scores(scores: torch.Tensor, what: str) -> None:
    """Refuse NaN/inf log-likelihoods: argmax over ``[nan, nan]`` is label 0, a normal-looking accuracy."""
    if not bool(torch.isfinite(scores).all()):
        rows = int((~torch.isfinite(scores)).any(-1).sum())
        raise NonFiniteModel(
            f"{what}: scores are not finite (NaN or inf) for {rows} of {len(scores)} examples, so the model's weights are "
            "not finite (a training run that diverged?); load a model whose weights are finite"
        )


def _group_key(task: Task, row: Mapping):
    idx = row.get("idx")
    if isinstance(idx, Mapping):
        return tuple(idx[key] for key in task.group_by)
    return idx


def evaluate(
    model,
    tokenizer,
    task: Task | str,
    rows,
    *,
    mode: Mode = "generate",
    shots: Sequence[Mapping] = (),
    answer_format: str = "options",
    batch_size: int = 16,
    max_new_tokens: int = 8,
    strict: bool = False,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    calibrate: bool = False,
    random_fill: bool = False,
    n_bootstrap: int = 1000,
    split: str | None = None,
    model_name: str | None = None,
    adapter: str | None = None,
    progress: bool = True,
    prefix_cache: bool = True,
) -> EvalResult:
    """Evaluate ``model`` on ``rows`` of ``task`` and return metrics, CIs, label shares and predictions.

    ``strict=False`` parses as the authors' evaluation did (lenient); unparseable answers
    stay unparseable. ``random_fill`` additionally reports metrics with unparseable answers
    replaced by seeded random labels, only to compare with the paper's numbers.
    ``calibrate`` (scoring mode) divides out the label bias measured on content-free inputs.
    ``prefix_cache`` computes the prompts' shared prefix once per batch (same predictions, faster).
    """
    task = get_task(task)
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not known; allowed: {', '.join(MODES)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if calibrate and (mode != "score" or task.kind != "classification"):
        raise ValueError(
            f"calibrate=True needs mode='score' on a classification task; got mode={mode!r} on {task.name!r} ({task.kind})"
        )
    rows = _rows(rows)
    if not rows:
        raise ValueError(f"no rows to evaluate for task {task.name!r}")
    units = _unit_rows(task, rows)
    for row in units:
        task.check_label(row)
    prompts = [task.build_prompt(row, shots, answer_format) for row in units]
    what = f"task {task.name!r}, model {model_name or getattr(model, 'name_or_path', None) or type(model).__name__!r}"
    _check_finite_weights(model, what)

    start = time.perf_counter()
    texts: list[str | None] = [None] * len(units)
    scores = None
    if mode == "generate":
        texts = generate_texts(
            model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
            do_sample=do_sample, temperature=temperature, seed=seed, progress=progress, prefix_cache=prefix_cache,
        )
        unit_preds = [parse_answer(task, text, strict=strict) for text in texts]
    else:
        scores = score_continuations(model, tokenizer, prompts, _continuations(task), batch_size=batch_size, progress=progress,
                                     prefix_cache=prefix_cache)
        _check_finite_scores(scores, what)
        if calibrate:
            bias = content_free_probabilities(model, tokenizer, task, units[0], shots, answer_format,
                                              batch_size=batch_size).mean(0)  # [C]
            scores = calibrate_scores(scores, bias)
        if task.kind == "regression":
            probs = torch.softmax(scores, dim=-1)
            unit_preds = (probs @ torch.tensor(STSB_SCORES, dtype=torch.float32)).tolist()
        else:
            unit_preds = scores.argmax(-1).tolist()
    seconds = time.perf_counter() - start

    predictions, references, groups, records = _aggregate(task, rows, units, unit_preds, texts, scores)
    values = metrics_lib.compute(task, predictions, references, groups=groups)
    filled = None
    if random_fill and values["unparseable"]:
        rng = random.Random(seed)
        fill = [
            (p if p is not None else _random_label(task, rng, units, i)) for i, p in enumerate(predictions)
        ]
        filled = metrics_lib.compute(task, fill, references, groups=groups)
    settings = dict(
        answer_format=answer_format, batch_size=batch_size, max_new_tokens=max_new_tokens, strict=strict, do_sample=do_sample,
        temperature=temperature, seed=seed, n_bootstrap=n_bootstrap, random_fill=random_fill,
        versions=library_versions(),
    )
    return EvalResult(
        task=task.name, split=split, model=model_name, adapter=adapter, mode=mode, k=len(shots),
        metrics={k: v for k, v in values.items() if k not in ("unparseable", "n")},
        unparseable=int(values["unparseable"]), n=int(values["n"]), seconds=seconds,
        examples_per_s=len(units) / seconds if seconds > 0 else math.inf,
        ci=bootstrap_ci(task, predictions, references, groups=groups, n_resamples=n_bootstrap, seed=seed),
        label_share=label_share(task, predictions, references), settings=settings,
        metrics_random_fill=filled, calibrated=calibrate, predictions=records,
    )


def _random_label(task: Task, rng: random.Random, units, i):
    if task.kind == "regression":
        return rng.uniform(0.0, 5.0)
    if task.kind == "record":
        return rng.choice([u["entity"] for u in units if u["query_index"] == i])
    return rng.randrange(len(task.answer_words))


def _aggregate(task: Task, rows, units, unit_preds, texts, scores):
    """Per-row predictions, references and groups for the metrics, and records to save."""
    if task.kind == "record":
        return _aggregate_record(task, rows, units, unit_preds, texts, scores)
    groups = [_group_key(task, row) for row in rows] if task.group_by else None
    records = []
    for i, row in enumerate(rows):
        record = {"index": i, "idx": row.get("idx"), "label": row["label"], "prediction": unit_preds[i]}
        if texts[i] is not None:
            record["text"] = texts[i]
        if scores is not None:
            record["scores"] = [round(float(s), 4) for s in scores[i]]
        records.append(record)
    return list(unit_preds), [row["label"] for row in rows], groups, records


def _aggregate_record(task: Task, rows, units, unit_preds, texts, scores):
    """ReCoRD: each query's answer is the candidate judged most likely right.

    Scoring mode: the largest margin log p(Yes) - log p(No). Generation mode: the first
    candidate answered "Yes"; a query with no "Yes" at all stays unanswered (unparseable).
    """
    by_query: dict[int, list[int]] = {}
    for j, unit in enumerate(units):
        by_query.setdefault(unit["query_index"], []).append(j)
    predictions, records = [], []
    right = 1  # candidate_words = (wrong, right)
    for i, row in enumerate(rows):
        candidates = by_query.get(i, [])
        if scores is not None:
            margins = [float(scores[j, right] - scores[j, 1 - right]) for j in candidates]
            chosen = units[candidates[int(np.argmax(margins))]]["entity"] if candidates else None
        else:
            yes = [j for j in candidates if unit_preds[j] == right]
            chosen = units[yes[0]]["entity"] if yes else None
        predictions.append(chosen)
        record = {
            "index": i, "idx": row.get("idx"), "answers": list(row.get("answers") or []), "prediction": chosen,
            "candidates": [units[j]["entity"] for j in candidates],
        }
        if texts and any(texts[j] is not None for j in candidates):
            record["texts"] = [texts[j] for j in candidates]
        records.append(record)
    references = [list(row.get("answers") or []) for row in rows]
    return predictions, references, None, records


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a number, stored with every result."""
    import importlib.metadata as md

    versions = {}
    for name in ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "nlu-helpers"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions
