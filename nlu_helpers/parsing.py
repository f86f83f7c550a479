"""Reading the model's answer out of its generated text.

``text`` is what the model wrote after the prompt, which already ends with the
opening ``<Judgement>`` tag, e.g. ``" Positive </Judgement>"``.

Strict (training, the reward): the answer is the text before the first
``</Judgement>``; without a closing tag, with several label words, or with none,
the answer is unparseable (``None``). Label words must match exactly, as whole words.

Lenient (the authors' evaluation): the whole text counts when there is no closing
tag, and label words match in any letter case. Even then an unparseable answer
stays ``None``; turning it into a random label is an explicit option of the
evaluation engine, for comparison with the paper's numbers only.
"""

from __future__ import annotations

import re
from functools import lru_cache

from nlu_helpers.prompts import JUDGEMENT_CLOSE
from nlu_helpers.tasks import Task, get_task

STSB_RANGE = (0.0, 5.0)
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


def answer_span(text: str, *, strict: bool = True) -> str | None:
    """The part of ``text`` that holds the answer: everything before ``</Judgement>``."""
    end = text.find(JUDGEMENT_CLOSE)
    if end >= 0:
        return text[:end]
    if strict:
        return None
    return text


@lru_cache(maxsize=None)
def _word_pattern(word: str, ignore_case: bool) -> re.Pattern[str]:
    # whole words only: "No" must not match inside "Not" or "Nothing"
    return re.compile(r"(?<!\w)" + re.escape(word) + r"(?!\w)", re.IGNORECASE if ignore_case else 0)


def parse_answer(task: Task | str, text: str, strict: bool = True) -> int | float | None:
    """The label id (a float for STS-B) the model answered, or ``None`` if unparseable.

    ReCoRD is judged one candidate entity at a time: its answer is 1 for the
    "right" word (Yes) and 0 for the "wrong" word (No).
    """
    task = get_task(task)
    if not isinstance(text, str):
        raise TypeError(f"text must be the generated string, got {type(text).__name__}")
    span = answer_span(text, strict=strict)
    if span is None:
        return None
    if task.kind == "regression":
        match = _NUMBER.search(span)
        if match is None:
            return None
        value = float(match.group())
        low, high = STSB_RANGE
        return value if low <= value <= high else None
    found = [
        label for label, word in enumerate(task.answer_words)
        if _word_pattern(word, not strict).search(span)
    ]
    return found[0] if len(found) == 1 else None
