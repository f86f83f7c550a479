"""The paper's rule-based reward: agreement of the parsed answer with the gold label.

| task type                                   | correct | wrong | unparseable |
|---------------------------------------------|---------|-------|-------------|
| classification, ReCoRD candidate checks     | +1      | -1    | -3          |
| STS-B                                       | 2.5 - abs(prediction - gold) | | -2.5 |

Answers are parsed strictly (the text before the first ``</Judgement>``), so the
policy is paid for closing the tag and for answering with exactly one label word.
The score is given once per response; PPO adds it at the last response token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from nlu_helpers.parsing import parse_answer
from nlu_helpers.tasks import Task, get_task, task_of


@dataclass(frozen=True)
class RewardConfig:
    """The reward table's values; the defaults are the paper's."""

    correct: float = 1.0
    wrong: float = -1.0
    unparseable: float = -3.0
    regression_max: float = 2.5  # STS-B: regression_max - |prediction - gold|
    regression_unparseable: float = -2.5

    def __post_init__(self) -> None:
        if not self.correct > self.wrong:
            raise ValueError(f"correct ({self.correct}) must be larger than wrong ({self.wrong})")


PAPER = RewardConfig()


def reward(task: Task | str, text: str, example: Mapping, config: RewardConfig = PAPER) -> float:
    """The reward for generating ``text`` on ``example`` (a data row with its gold ``label``); with a
    :class:`~nlu_helpers.tasks.TaskMix` the row's own task judges it."""
    task = task_of(get_task(task), example)
    gold = task.check_label(example)
    prediction = parse_answer(task, text, strict=True)
    if task.kind == "regression":
        if prediction is None:
            return config.regression_unparseable
        return config.regression_max - abs(float(prediction) - float(gold))
    if prediction is None:
        return config.unparseable
    return config.correct if prediction == gold else config.wrong

