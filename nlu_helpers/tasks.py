"""The task registry: every GLUE and SuperGLUE task, the offline default, and your own.

A :class:`Task` knows where its data lives on the hub, which fields an example has,
the paper's label words (indexed by the hub's label ids), how to render an instance
in a prompt, the SFT target, and its official metrics. Look tasks up with
:func:`get_task`; :data:`TASKS` holds them all by canonical name. A task file
(YAML, see :mod:`nlu_helpers.taskfile`) goes wherever a task name goes:
``get_task("my/task.yaml")``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Mapping, Sequence

from nlu_helpers import prompts

Kind = Literal["classification", "regression", "record"]

GLUE = "nyu-mll/glue"
SUPERGLUE = "aps/super_glue"
STANDARD_SPLITS = {"train": "train", "validation": "validation", "test": "test"}
DATA_FORMATS = (".csv", ".json", ".jsonl", ".parquet")  # files a custom task may read
TASK_FILE_SUFFIXES = (".yaml", ".yml")  # a task name ending so is a task file
TASK_FILES_ENV = "NLU_WORKBOOK_TASK_FILES"  # task files loaded so far, inherited by child processes


class TaskFileError(ValueError):
    """A task file, or the data it names, has problems: ``problems`` holds one line each."""

    def __init__(self, path: str | os.PathLike, problems: Sequence[str]) -> None:
        self.path, self.problems = str(path), list(problems)
        if len(self.problems) == 1:
            super().__init__(f"task file {self.path!r}: {self.problems[0]}")
        else:
            super().__init__(f"task file {self.path!r} has {len(self.problems)} problems:\n"
                             + "\n".join(f"  - {p}" for p in self.problems))


def label_word_problems(words: Sequence[str]) -> list[str]:
    """Why ``words`` cannot be a task's label words (empty list: they can).

    Parsing reads whole words ignoring case in lenient mode, so words must be
    non-empty, distinct ignoring case, and free of the answer tags.
    """
    problems = []
    if len(words) < 2:
        problems.append(f"label words must be at least two, got {list(words)}")
    seen: dict[str, str] = {}
    for word in words:
        if not isinstance(word, str) or not word.strip():
            problems.append(f"label word {word!r} is empty or not text")
            continue
        if word != word.strip():
            problems.append(f"label word {word!r} starts or ends with a space")
        if prompts.JUDGEMENT_OPEN in word or prompts.JUDGEMENT_CLOSE in word:
            problems.append(f"label word {word!r} holds an answer tag")
        key = word.casefold()
        if key in seen:
            same = "is given twice" if seen[key] == word else f"and {seen[key]!r} differ only in letter case"
            problems.append(f"label word {word!r} {same}; label words must differ ignoring case")
        seen.setdefault(key, word)
    return problems


def _field(example: Mapping, task: str, *names: str):
    """The first of ``names`` present in ``example``, or a clear error."""
    for name in names:
        if name in example:
            return example[name]
    wanted = " or ".join(repr(n) for n in names)
    raise KeyError(
        f"task {task!r} needs field {wanted} in the example; the example has fields {sorted(example)}"
    )


@dataclass(frozen=True)
class Task:
    """One benchmark task, as the paper frames it for a decoder model."""

    name: str
    title: str
    benchmark: str  # "glue" | "superglue" | "offline" | "custom"
    description: str  # the task part of the prompt
    fields: tuple[tuple[str, tuple[str, ...]], ...]  # (shown name, accepted field names)
    label_words: tuple[str, ...] | None
    metrics: tuple[str, ...]
    main_metric: str
    kind: Kind = "classification"
    hub_id: str | None = None
    hub_config: str | None = None
    splits: Mapping[str, str] = field(default_factory=lambda: dict(STANDARD_SPLITS))
    eval_splits: tuple[str, ...] = ("validation",)
    test_splits: tuple[str, ...] = ("test",)
    train_task: str | None = None  # diagnostics borrow training data from this task
    aliases: tuple[str, ...] = ()
    group_by: tuple[str, ...] = ()  # keys of example["idx"] that form a question (MultiRC, ReCoRD)
    candidate_words: tuple[str, ...] | None = None  # ReCoRD: (wrong, right) per candidate entity
    renderer: Callable[[Mapping], str] | None = None  # overrides the field-by-field rendering
    data_files: Mapping[str, str] | None = None  # custom tasks: split -> CSV/JSONL/Parquet path
    source_label_column: str = "label"  # custom tasks: the file's label column, renamed to "label" on load
    label_values: tuple[str, ...] | None = None  # task files: the file's label values in label-id order
    source: str | None = None  # task files: the file's absolute path (what another process passes to get_task)

    def __post_init__(self) -> None:
        for words in (self.label_words, self.candidate_words):
            problems = label_word_problems(words) if words is not None else []
            if problems:
                raise ValueError(f"task {self.name!r}: {'; '.join(problems)}")

    # -- labels ---------------------------------------------------------------------
    @property
    def answer_words(self) -> tuple[str, ...]:
        """The words the model may answer with (ReCoRD: the per-candidate words)."""
        words = self.label_words or self.candidate_words
        if words is None:
            raise ValueError(f"task {self.name!r} answers with a number, not label words")
        return words

    @property
    def num_labels(self) -> int | None:
        return None if self.kind == "regression" else len(self.answer_words)

    def check_label(self, example: Mapping) -> int | float:
        """The example's gold label, checked against the task's label range."""
        if "label" not in example:
            raise KeyError(f"task {self.name!r}: the example has no 'label' field (fields: {sorted(example)})")
        label = example["label"]
        if self.kind == "regression":
            if isinstance(label, bool) or not isinstance(label, (int, float)) or not 0.0 <= float(label) <= 5.0 or math.isnan(float(label)):
                raise ValueError(f"task {self.name!r}: label {label!r} is out of range; allowed is a number in [0, 5]")
            return float(label)
        n = len(self.answer_words)
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < n:
            raise ValueError(
                f"task {self.name!r}: label {label!r} is out of range; allowed label ids are "
                f"0..{n - 1} ({', '.join(f'{i}={w}' for i, w in enumerate(self.answer_words))})"
            )
        return label

    # -- prompts --------------------------------------------------------------------
    def render(self, example: Mapping) -> str:
        """The instance as it appears in the prompt (no answer)."""
        if self.kind == "record" and "entity" not in example:
            raise KeyError(
                f"task {self.name!r} judges one candidate entity at a time: expand the row with "
                "nlu_helpers.tasks.record_candidates(example) first"
            )
        if self.renderer is not None:
            return self.renderer(example)
        return "\n".join(f"{shown}: {_field(example, self.name, *names)}" for shown, names in self.fields)

    def build_prompt(self, example: Mapping, shots: Sequence[Mapping] = (), answer_format: str = "options") -> str:
        """The paper-style prompt, ending with the opening ``<Judgement>`` tag."""
        return prompts.build_prompt(self, example, shots, answer_format)

    def target(self, example: Mapping) -> str:
        """The SFT completion without EOS: ``" Positive </Judgement>"``."""
        return prompts.answer_text(self, self.check_label(example))

    def hub_split(self, split: str) -> str:
        """The hub's name for one of our split names, or a clear error."""
        if split not in self.splits:
            raise ValueError(f"task {self.name!r} has no split {split!r}; allowed: {sorted(self.splits)}")
        return self.splits[split]


# -- renderers for tasks whose instance is more than "Field: value" lines ----------------

def _copa(example: Mapping) -> str:
    relation = {"cause": "What was the cause?", "effect": "What happened as a result?"}
    question = _field(example, "copa", "question")
    if question not in relation:
        raise ValueError(f"copa: question {question!r} is not known; allowed: 'cause', 'effect'")
    return (
        f"Premise: {_field(example, 'copa', 'premise')}\n"
        f"Question: {relation[question]}\n"
        f"Option one: {_field(example, 'copa', 'choice1')}\n"
        f"Option two: {_field(example, 'copa', 'choice2')}"
    )


def _record(example: Mapping) -> str:
    passage = _field(example, "record", "passage").replace("@highlight\n", "- ")
    query = _field(example, "record", "query")
    if "@placeholder" not in query:
        raise ValueError(f"record: the query has no @placeholder: {query!r}")
    return f"Passage: {passage}\nStatement: {query.replace('@placeholder', example['entity'])}"


def _wsc(example: Mapping) -> str:
    return (
        f"Sentence: {_field(example, 'wsc', 'text')}\n"
        f"Pronoun: \"{_field(example, 'wsc', 'span2_text')}\"\n"
        f"Candidate: \"{_field(example, 'wsc', 'span1_text')}\""
    )


def _wic(example: Mapping) -> str:
    return (
        f"Word: {_field(example, 'wic', 'word')}\n"
        f"Sentence 1: {_field(example, 'wic', 'sentence1')}\n"
        f"Sentence 2: {_field(example, 'wic', 'sentence2')}"
    )


def record_candidates(example: Mapping) -> list[dict]:
    """Expand one ReCoRD row into one yes/no row per candidate entity.

    Each candidate row keeps the passage and query, adds ``entity`` and sets
    ``label`` to 1 when the entity is among the gold answers (0 otherwise). Test
    rows have no answers: their candidate labels are -1.
    """
    entities = list(dict.fromkeys(_field(example, "record", "entities")))  # unique, in order
    answers = set(example.get("answers") or [])
    has_gold = bool(answers)
    return [
        {
            "passage": example["passage"],
            "query": example["query"],
            "entity": entity,
            "idx": example.get("idx"),
            "answers": list(example.get("answers") or []),
            "label": (1 if entity in answers else 0) if has_gold else -1,
        }
        for entity in entities
    ]


# -- the registry ------------------------------------------------------------------------

PREMISE = ("Premise", ("premise", "sentence1"))
HYPOTHESIS = ("Hypothesis", ("hypothesis", "sentence2"))
ENTAIL_YES_NO = ("Yes", "No")  # 0 = entailment
NLI_DESCRIPTION = (
    "Task: natural-language inference. Read the premise and the hypothesis and decide whether "
    "the premise entails the hypothesis (Yes) or not (No)."
)
MNLI_DESCRIPTION = (
    "Task: natural-language inference. Read the premise and the hypothesis and decide whether the "
    "premise entails the hypothesis (Entailment), contradicts it (Contradiction), or neither (Neutral)."
)
SENTIMENT_DESCRIPTION = (
    "Task: sentiment analysis. Read the sentence from a movie review and decide whether it "
    "expresses a positive or a negative opinion."
)

_ALL: list[Task] = [
    # ---------------- GLUE ----------------
    Task(
        name="cola", title="CoLA", benchmark="glue", hub_id=GLUE, hub_config="cola",
        description="Task: grammatical acceptability. Decide whether the sentence is an acceptable English sentence (Yes) or not (No).",
        fields=(("Sentence", ("sentence",)),), label_words=("No", "Yes"),
        metrics=("mcc", "accuracy"), main_metric="mcc",
    ),
    Task(
        name="sst2", title="SST-2", benchmark="glue", hub_id=GLUE, hub_config="sst2", aliases=("sst-2", "sst"),
        description=SENTIMENT_DESCRIPTION,
        fields=(("Sentence", ("sentence",)),), label_words=("Negative", "Positive"),
        metrics=("accuracy",), main_metric="accuracy",
    ),
    Task(
        name="mrpc", title="MRPC", benchmark="glue", hub_id=GLUE, hub_config="mrpc",
        description="Task: paraphrase detection. Decide whether the two sentences mean the same thing (Yes) or not (No).",
        fields=(("Sentence 1", ("sentence1",)), ("Sentence 2", ("sentence2",))), label_words=("No", "Yes"),
        metrics=("f1", "accuracy"), main_metric="f1",
    ),
    Task(
        name="qqp", title="QQP", benchmark="glue", hub_id=GLUE, hub_config="qqp",
        description="Task: duplicate questions. Decide whether the two questions ask the same thing (Yes) or not (No).",
        fields=(("Question 1", ("question1",)), ("Question 2", ("question2",))), label_words=("No", "Yes"),
        metrics=("f1", "accuracy"), main_metric="f1",
    ),
    Task(
        name="stsb", title="STS-B", benchmark="glue", hub_id=GLUE, hub_config="stsb", aliases=("sts-b", "sts"),
        kind="regression",
        description="Task: semantic similarity. Rate how close in meaning the two sentences are, from 0 (unrelated) to 5 (the same meaning).",
        fields=(("Sentence 1", ("sentence1",)), ("Sentence 2", ("sentence2",))), label_words=None,
        metrics=("pearson", "spearman"), main_metric="spearman",
    ),
    Task(
        name="mnli", title="MNLI", benchmark="glue", hub_id=GLUE, hub_config="mnli",
        aliases=("mnli-m", "mnli-mm", "multinli"),
        description=MNLI_DESCRIPTION, fields=(PREMISE, HYPOTHESIS),
        label_words=("Entailment", "Neutral", "Contradiction"),
        metrics=("accuracy",), main_metric="accuracy",
        splits={
            "train": "train",
            "validation_matched": "validation_matched",
            "validation_mismatched": "validation_mismatched",
            "test_matched": "test_matched",
            "test_mismatched": "test_mismatched",
        },
        eval_splits=("validation_matched", "validation_mismatched"),
        test_splits=("test_matched", "test_mismatched"),
    ),
    Task(
        name="qnli", title="QNLI", benchmark="glue", hub_id=GLUE, hub_config="qnli",
        description="Task: question answering as inference. Decide whether the sentence contains the answer to the question (Yes) or not (No).",
        fields=(("Question", ("question",)), ("Sentence", ("sentence",))), label_words=ENTAIL_YES_NO,
        metrics=("accuracy",), main_metric="accuracy",
    ),
    Task(
        name="rte", title="RTE", benchmark="glue", hub_id=GLUE, hub_config="rte", aliases=("glue-rte",),
        description=NLI_DESCRIPTION, fields=(PREMISE, HYPOTHESIS), label_words=ENTAIL_YES_NO,
        metrics=("accuracy",), main_metric="accuracy",
    ),
    Task(
        name="wnli", title="WNLI", benchmark="glue", hub_id=GLUE, hub_config="wnli",
        description=NLI_DESCRIPTION.replace("entails the hypothesis (Yes) or not (No)", "entails the hypothesis (Yes) or not (No); the hypothesis resolves a pronoun of the premise"),
        fields=(PREMISE, HYPOTHESIS), label_words=("No", "Yes"),
        metrics=("accuracy",), main_metric="accuracy",
    ),
    Task(
        name="ax", title="AX", benchmark="glue", hub_id=GLUE, hub_config="ax", aliases=("glue-ax", "glue-diagnostic"),
        description=MNLI_DESCRIPTION, fields=(PREMISE, HYPOTHESIS),
        label_words=("Entailment", "Neutral", "Contradiction"),
        metrics=("mcc",), main_metric="mcc",
        splits={"test": "test"}, eval_splits=(), train_task="mnli",  # GLUE hides AX labels: test server only
    ),
    # ---------------- SuperGLUE ----------------
    Task(
        name="boolq", title="BoolQ", benchmark="superglue", hub_id=SUPERGLUE, hub_config="boolq",
        description="Task: yes/no questions. Read the passage and answer the question with Yes or No.",
        fields=(("Passage", ("passage",)), ("Question", ("question",))), label_words=("No", "Yes"),
        metrics=("accuracy",), main_metric="accuracy",
    ),
    Task(
        name="cb", title="CB", benchmark="superglue", hub_id=SUPERGLUE, hub_config="cb", aliases=("commitmentbank",),
        description=MNLI_DESCRIPTION, fields=(PREMISE, HYPOTHESIS),
        label_words=("Entailment", "Contradiction", "Neutral"),
        metrics=("accuracy", "f1"), main_metric="f1",
    ),
    Task(
        name="copa", title="COPA", benchmark="superglue", hub_id=SUPERGLUE, hub_config="copa",
        description="Task: causal reasoning. Pick the option that is the more plausible cause or effect of the premise.",
        fields=(), renderer=_copa, label_words=("Option one", "Option two"),
        metrics=("accuracy",), main_metric="accuracy",
    ),
    Task(
        name="multirc", title="MultiRC", benchmark="superglue", hub_id=SUPERGLUE, hub_config="multirc",
        description="Task: reading comprehension. Read the paragraph and the question, and decide whether the candidate answer is True or False.",
        fields=(("Paragraph", ("paragraph",)), ("Question", ("question",)), ("Candidate answer", ("answer",))),
        label_words=("False", "True"), group_by=("paragraph", "question"),
        metrics=("f1a", "em"), main_metric="f1a",
    ),
    Task(
        name="record", title="ReCoRD", benchmark="superglue", hub_id=SUPERGLUE, hub_config="record",
        kind="record", renderer=_record, fields=(), label_words=None, candidate_words=("No", "Yes"),
        description="Task: reading comprehension with commonsense. The statement fills a gap after the passage with one entity; decide whether the filled-in statement is correct (Yes) or not (No).",
        group_by=("passage", "query"), metrics=("f1", "em"), main_metric="f1",
    ),
    Task(
        name="superglue-rte", title="RTE (SuperGLUE)", benchmark="superglue", hub_id=SUPERGLUE, hub_config="rte",
        aliases=("sg-rte", "super_glue-rte", "superglue_rte"),
        description=NLI_DESCRIPTION, fields=(PREMISE, HYPOTHESIS), label_words=ENTAIL_YES_NO,
        metrics=("accuracy",), main_metric="accuracy",
    ),
    Task(
        name="wic", title="WiC", benchmark="superglue", hub_id=SUPERGLUE, hub_config="wic",
        description="Task: word sense. Decide whether the word has the Same sense in both sentences or a Different one.",
        fields=(), renderer=_wic, label_words=("Different", "Same"),
        metrics=("accuracy",), main_metric="accuracy",
    ),
    Task(
        name="wsc", title="WSC", benchmark="superglue", hub_id=SUPERGLUE, hub_config="wsc.fixed", aliases=("wsc.fixed",),
        description="Task: coreference. Decide whether the pronoun in the sentence refers to the candidate (Yes) or not (No).",
        fields=(), renderer=_wsc, label_words=("No", "Yes"),
        metrics=("accuracy",), main_metric="accuracy",
    ),
    Task(
        name="axb", title="AX-b", benchmark="superglue", hub_id=SUPERGLUE, hub_config="axb", aliases=("ax-b",),
        description=NLI_DESCRIPTION, fields=(PREMISE, HYPOTHESIS), label_words=ENTAIL_YES_NO,
        metrics=("mcc",), main_metric="mcc",
        splits={"test": "test"}, eval_splits=("test",), train_task="superglue-rte",
    ),
    Task(
        name="axg", title="AX-g", benchmark="superglue", hub_id=SUPERGLUE, hub_config="axg", aliases=("ax-g", "winogender"),
        description=NLI_DESCRIPTION, fields=(PREMISE, HYPOTHESIS), label_words=ENTAIL_YES_NO,
        metrics=("gender_parity", "accuracy"), main_metric="accuracy",
        splits={"test": "test"}, eval_splits=("test",), train_task="superglue-rte",
    ),
    # ---------------- the offline default ----------------
    Task(
        name="movie-snippets", title="Movie snippets (offline SST-2)", benchmark="offline",
        aliases=("offline", "offline-sst2", "rt-snippets"),
        description=SENTIMENT_DESCRIPTION,
        fields=(("Sentence", ("sentence",)),), label_words=("Negative", "Positive"),
        metrics=("accuracy",), main_metric="accuracy",
    ),
]

GLUE_TASKS = tuple(t.name for t in _ALL if t.benchmark == "glue")
SUPERGLUE_TASKS = tuple(t.name for t in _ALL if t.benchmark == "superglue")
OFFLINE_TASK = "movie-snippets"

TASKS: dict[str, Task] = {t.name: t for t in _ALL}
_ALIASES: dict[str, str] = {}


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def _index(task: Task) -> None:
    for key in (task.name, *task.aliases):
        _ALIASES[_normalise(key)] = task.name


for _task in _ALL:
    _index(_task)


def is_task_file(name: object) -> bool:
    """Whether ``name`` names a task file (a path ending in .yaml or .yml) rather than a task."""
    return isinstance(name, (str, os.PathLike)) and str(name).strip().lower().endswith(TASK_FILE_SUFFIXES)


@dataclass(frozen=True)
class TaskMix:
    """Several tasks trained as one (the paper's multi-task PPO): every row names its task in ``row["task"]``.

    It answers what PPO asks of a task (``name``, ``kind``, ``check_label``, ``build_prompt``)
    by asking the row's own task, so each row keeps its prompt, label words and reward.
    """

    tasks: tuple[Task, ...]
    name: str = "multi-task"

    def __post_init__(self) -> None:
        unsupported = [t.name for t in self.tasks if t.kind != "classification"]
        if not self.tasks or unsupported:
            raise ValueError(f"a task mix takes classification tasks (label words); got {unsupported or 'none'}")

    @property
    def kind(self) -> str:
        return "classification"

    @property
    def title(self) -> str:
        return "multi-task (" + ", ".join(t.name for t in self.tasks) + ")"

    def of(self, row: Mapping) -> Task:
        """The task a row belongs to."""
        names = {t.name: t for t in self.tasks}
        if row.get("task") not in names:
            raise ValueError(f"row's task {row.get('task')!r} is not in this mix; allowed: {', '.join(names)}")
        return names[row["task"]]

    def check_label(self, row: Mapping) -> int | float:
        return self.of(row).check_label(row)

    def build_prompt(self, row: Mapping, shots: Sequence[Mapping] = (), answer_format: str = "options") -> str:
        return self.of(row).build_prompt(row, shots, answer_format)

    def target(self, row: Mapping) -> str:
        return self.of(row).target(row)


def task_of(task: "Task | TaskMix", row: Mapping) -> Task:
    """The task that judges ``row``: ``task`` itself, or the row's own task when ``task`` is a mix."""
    return task.of(row) if isinstance(task, TaskMix) else task


def mix_rows(rows_by_task: Mapping[str, Sequence[Mapping]], *, seed: int = 0) -> tuple[TaskMix, list[dict]]:
    """A :class:`TaskMix` of the tasks and their rows, each tagged with ``task``, shuffled with ``seed``."""
    import random

    mixed = [dict(row) | {"task": get_task(name).name} for name, rows in rows_by_task.items() for row in rows]
    random.Random(seed).shuffle(mixed)
    return TaskMix(tuple(get_task(name) for name in rows_by_task)), mixed


def get_task(name: str | os.PathLike | Task) -> Task:
    """A task by name, case-insensitive ("SST2", "superglue-rte", "axb", "AX-b"), or from a task file.

    A path ending in .yaml/.yml is read, checked and registered under its ``name``
    (see :mod:`nlu_helpers.taskfile`); later calls return the same task until the
    file or its data change.
    """
    if isinstance(name, (Task, TaskMix)):
        return name
    if is_task_file(name):
        from nlu_helpers import taskfile  # taskfile builds Tasks: imported here, not at the top

        return taskfile.load_task_file(name)
    key = _normalise(str(name))
    compact = key.replace("-", "")
    for candidate in (key, compact):
        if candidate in _ALIASES:
            return TASKS[_ALIASES[candidate]]
    for alias, canonical in _ALIASES.items():
        if alias.replace("-", "") == compact:
            return TASKS[canonical]
    from nlu_helpers.suite import suite_task_files  # the offline suite's packaged task files, read on first use

    packaged = suite_task_files()
    if key in packaged:
        from nlu_helpers import taskfile

        return taskfile.load_task_file(packaged[key])
    failures: list[str] = []
    if os.environ.get(TASK_FILES_ENV):  # task files a parent process loaded (the runner, for a kernel)
        from nlu_helpers import taskfile

        failures = taskfile.load_listed()
        if key in _ALIASES:
            return TASKS[_ALIASES[key]]
    unread = f"; task files that could not be read: {' | '.join(failures)}" if failures else ""
    known = sorted({*TASKS, *packaged})
    raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(known)}{unread}")


def register_task(
    name: str,
    *,
    data_files: Mapping[str, str | Path],
    text_fields: Sequence[str],
    label_words: Sequence[str],
    instruction: str,
    label_field: str = "label",
    metrics: Sequence[str] = ("accuracy",),
    replace: bool = False,
) -> Task:
    """Add your own classification task from data files, without editing the package (in this process only).

    ``data_files`` maps split names ("train", "validation", "test") to CSV, JSON Lines
    or Parquet files with the ``text_fields`` and an integer ``label_field``
    (0..len(label_words)-1). ``instruction`` is the task part of the prompt
    ("Task: ... Decide whether ..."). A task file does the same without Python and
    also reaches notebooks and the command line: see :mod:`nlu_helpers.taskfile`.
    """
    if not data_files:
        raise ValueError("data_files is empty: give at least one split, e.g. {'train': 'train.csv'}")
    for split, path in data_files.items():
        if Path(path).suffix.lower() not in DATA_FORMATS:
            raise ValueError(f"data file {str(path)!r} for split {split!r}: allowed formats are {', '.join(DATA_FORMATS)}")
    problems = label_word_problems(list(label_words))
    if problems:
        raise ValueError(f"task {name!r}: {'; '.join(problems)}")
    if not text_fields:
        raise ValueError("text_fields is empty: name the columns the prompt should show")
    key = _normalise(name)
    if key in _ALIASES and not replace:
        raise ValueError(f"task name {name!r} is taken by {_ALIASES[key]!r}; pass replace=True or pick another name")
    allowed_metrics = {"accuracy", "f1", "mcc"}
    if not set(metrics) <= allowed_metrics:
        raise ValueError(f"metrics {sorted(set(metrics) - allowed_metrics)} not allowed for a custom task; allowed: {sorted(allowed_metrics)}")
    task = Task(
        name=key, title=name, benchmark="custom", description=instruction,
        fields=tuple((f.replace("_", " ").capitalize(), (f,)) for f in text_fields),
        label_words=tuple(label_words), metrics=tuple(metrics), main_metric=metrics[0],
        splits={split: split for split in data_files}, eval_splits=("validation",) if "validation" in data_files else (),
        test_splits=("test",) if "test" in data_files else (),
        data_files={split: str(path) for split, path in data_files.items()}, source_label_column=label_field,
    )
    TASKS[key] = task
    _index(task)
    return task


def check_task_file(path: str | os.PathLike) -> str:
    """Check a task file; a report with one prompt, label counts per split and every problem."""
    from nlu_helpers import taskfile

    return taskfile.check_task_file(path)
