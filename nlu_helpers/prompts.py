"""The paper's prompt structure, in our own words.

A prompt is plain text (no chat template):

    <what the task is>
    <how to answer: "<Judgement> X </Judgement>">
    [solved examples, each ending in its answer]
    <the instance>
    Assistant: <Judgement>

It ends with the opening tag, so the model's *first* generated tokens are the
answer; training and evaluation both rely on that (the answer is read before the
first ``</Judgement>``).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Literal, Mapping, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from nlu_helpers.tasks import Task

JUDGEMENT_OPEN = "<Judgement>"
JUDGEMENT_CLOSE = "</Judgement>"
ASSISTANT = "Assistant:"
SHOTS_INTRO = "Here are some solved examples."
SHOTS_OUTRO = "Now the case to judge."


def answer_format_line(task: "Task", style: str = "options") -> str:
    """The line that tells the model the only accepted answer format.

    ``"options"`` (the default) spells out every complete answer, e.g. ``<Judgement>
    Negative </Judgement> or <Judgement> Positive </Judgement>``. ``"placeholder"``
    writes ``<Judgement> X </Judgement>, where X is one of: ...``; small models copy the
    "X" literally (notebook 01 measures the difference).
    """
    if style not in ANSWER_FORMATS:
        raise ValueError(f"answer format {style!r} is not known; allowed: {', '.join(ANSWER_FORMATS)}")
    if task.kind == "regression":
        if style == "options":
            return (f"Reply first with a similarity score from 0 (unrelated) to 5 (same meaning), "
                    f"written as {JUDGEMENT_OPEN} 2.5 {JUDGEMENT_CLOSE} for a score of 2.5.")
        return (f"Give your answer as {JUDGEMENT_OPEN} X {JUDGEMENT_CLOSE}, where X is a number from 0 "
                "(unrelated meaning) to 5 (same meaning). Write the answer first.")
    words = task.answer_words
    if style == "options":
        answers = [f"{JUDGEMENT_OPEN} {w} {JUDGEMENT_CLOSE}" for w in words]
        listed = answers[0] if len(answers) == 1 else ", ".join(answers[:-1]) + " or " + answers[-1]
        return f"Reply first with one of these answers: {listed}."
    return (
        f"Give your answer as {JUDGEMENT_OPEN} X {JUDGEMENT_CLOSE}, where X is one of: {', '.join(words)}. "
        "Write the answer first."
    )


ANSWER_FORMATS = ("options", "placeholder")


def answer_text(task: "Task", label: int | float) -> str:
    """What the model should write after the opening tag: ``" Positive </Judgement>"``."""
    if task.kind == "regression":
        return f" {float(label):.1f} {JUDGEMENT_CLOSE}"
    words = task.answer_words
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(words):
        raise ValueError(
            f"label {label!r} is out of range for task {task.name!r}: "
            f"allowed label ids are 0..{len(words) - 1} ({', '.join(words)})"
        )
    return f" {words[label]} {JUDGEMENT_CLOSE}"


def build_prompt(task: "Task", example: Mapping, shots: Sequence[Mapping] = (), answer_format: str = "options") -> str:
    """The full prompt for ``example``, with ``shots`` as solved demonstrations."""
    parts = [task.description, answer_format_line(task, answer_format), ""]
    if shots:
        parts += [SHOTS_INTRO, ""]
        for shot in shots:
            label = task.check_label(shot)
            parts += [task.render(shot), f"{ASSISTANT} {JUDGEMENT_OPEN}{answer_text(task, label)}", ""]
        parts += [SHOTS_OUTRO, ""]
    parts += [task.render(example), f"{ASSISTANT} {JUDGEMENT_OPEN}"]
    return "\n".join(parts)


def select_shots(
    train_rows: Sequence[Mapping],
    k: int,
    *,
    seed: int = 0,
    strategy: Literal["random", "first"] = "random",
    exclude: Mapping | None = None,
) -> list[dict]:
    """Pick ``k`` demonstrations from the training rows (a list or a ``datasets.Dataset``).

    ``"random"`` draws without replacement with a seeded generator (the same seed
    always gives the same shots); ``"first"`` takes the first ``k`` rows, as the
    authors' scripts did. ``exclude`` leaves out one row (the example itself, when
    demonstrations come from the split being evaluated). Rows are read by index,
    so a 400k-row training split costs nothing to sample from.
    """
    if strategy not in ("random", "first"):
        raise ValueError(f"strategy {strategy!r} is not known: allowed are 'random', 'first'")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    n = len(train_rows)
    if k > n - (1 if exclude is not None else 0):
        raise ValueError(f"asked for k={k} demonstrations but the training split has {n} rows")
    if strategy == "first":
        order: Sequence[int] = range(n)
    else:
        order = random.Random(seed).sample(range(n), min(n, k + 1))
    shots: list[dict] = []
    for i in order:
        row = dict(train_rows[i])
        if exclude is not None and row == dict(exclude):
            continue
        shots.append(row)
        if len(shots) == k:
            break
    return shots
