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

Label words are found longest first, as whole words, in one left-to-right pass, so
a word inside another ("Sure" in "Not sure", "Good" in "Very Good") never counts
twice. In strict mode a label word in the wrong letter case is no answer, but it
still hides the words inside it ("Not Sure" is not "Sure").

STS-B: the first number decides, read as a whole token in 0..5 ("4.0" is 4.0;
"4e-1", "3.5e1" or "4th" are unparseable, not 4 or 3.5).
"""

from __future__ import annotations

import re
from functools import lru_cache

from nlu_helpers.prompts import JUDGEMENT_CLOSE
from nlu_helpers.tasks import Task, get_task

STSB_RANGE = (0.0, 5.0)
_TOKEN = re.compile(r"[\w.+-]+")  # a maximal run that could hold a number: "3.5", "4e-1", "-1"
_DECIMAL = re.compile(r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)")


def answer_span(text: str, *, strict: bool = True) -> str | None:
    """The part of ``text`` that holds the answer: everything before ``</Judgement>``."""
    end = text.find(JUDGEMENT_CLOSE)
    if end >= 0:
        return text[:end]
    if strict:
        return None
    return text


@lru_cache(maxsize=None)
def _words_pattern(words: tuple[str, ...]) -> re.Pattern[str]:
    """One pattern for all label words: longest first, whole words, any case; group ``w<i>`` is label i."""
    order = sorted(range(len(words)), key=lambda i: -len(words[i]))
    alternatives = "|".join(f"(?P<w{i}>{re.escape(words[i])})" for i in order)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def _label_in(span: str, words: tuple[str, ...], strict: bool) -> int | None:
    """The one label whose word the span holds, or None for none or several."""
    found = set()
    for match in _words_pattern(words).finditer(span):
        label = int(match.lastgroup[1:])
        if strict and match.group() != words[label]:
            continue  # wrong letter case: no answer in strict mode
        found.add(label)
    return found.pop() if len(found) == 1 else None


def _first_number(span: str) -> float | None:
    """The first number in the span if it is a whole, plain decimal in 0..5, else None."""
    for match in _TOKEN.finditer(span):
        token = match.group()
        if token[0].isalpha() or token[0] == "_" or not any(ch.isdigit() for ch in token):
            continue  # a word ("Sentence2", "nan") or punctuation, not a number
        if len(token) > 1 and token.endswith("."):
            token = token[:-1]  # the full stop of "It is 4."
        if not _DECIMAL.fullmatch(token):
            return None  # "4e-1", "3-4", "4th": the first number is no plain decimal
        value = float(token)
        low, high = STSB_RANGE
        return value if low <= value <= high else None
    return None


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
        return _first_number(span)
    return _label_in(span, tuple(task.answer_words), strict)
