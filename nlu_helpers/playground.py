"""The prompt-design playground: pick a task, an example and k; see prompt, answer, label, reward.

The logic is plain functions (``run_example``) so tests can check that what the
widget shows is what the package computes; ``playground_widget`` only wires
ipywidgets to it.
"""

from __future__ import annotations

import html
from typing import Mapping, Sequence

from nlu_helpers.evaluation import generate_texts
from nlu_helpers.parsing import parse_answer
from nlu_helpers.prompts import select_shots
from nlu_helpers.rewards import reward
from nlu_helpers.tasks import get_task, record_candidates


def _unit(task, row: Mapping) -> dict:
    return record_candidates(row)[0] if task.kind == "record" else dict(row)


def run_example(
    model,
    tokenizer,
    task_name: str,
    rows: Sequence[Mapping],
    index: int,
    *,
    k: int = 0,
    demonstrations: Sequence[Mapping] = (),
    shot_seed: int = 0,
    max_new_tokens: int = 12,
) -> dict:
    """Everything the playground shows for one choice, computed by the package itself."""
    task = get_task(task_name)
    if not 0 <= index < len(rows):
        raise IndexError(f"example index {index} is out of range; allowed: 0..{len(rows) - 1}")
    example = _unit(task, rows[index])
    pool = [_unit(task, r) for r in demonstrations] if demonstrations else [_unit(task, r) for i, r in enumerate(rows) if i != index]
    shots = select_shots(pool, k, seed=shot_seed) if k else []
    prompt = task.build_prompt(example, shots)
    answer = generate_texts(model, tokenizer, [prompt], batch_size=1, max_new_tokens=max_new_tokens, progress=False)[0]
    parsed = parse_answer(task, answer, strict=True)
    if parsed is None:
        parsed_word = "unparseable"
    elif task.kind == "regression":
        parsed_word = f"{parsed:.2f}"
    else:
        parsed_word = task.answer_words[parsed]
    gold = example["label"]
    return {
        "task": task.name,
        "index": index,
        "k": k,
        "prompt": prompt,
        "answer": answer,
        "parsed": parsed,
        "parsed_word": parsed_word,
        "gold": gold,
        "gold_word": f"{gold:.2f}" if task.kind == "regression" else task.answer_words[gold],
        "reward": reward(task, answer, example),
        "prompt_tokens": len(tokenizer(prompt)["input_ids"]),
    }


def render_html(shown: Mapping) -> str:
    """The playground's output panel (also what the browser tests read)."""
    def line(label: str, value, css: str) -> str:
        return f'<div class="pg-{css}"><b>{label}:</b> <code>{html.escape(str(value))}</code></div>'

    return (
        f'<pre class="pg-prompt" style="white-space:pre-wrap">{html.escape(shown["prompt"])}</pre>'
        + line("Model's answer", shown["answer"], "answer")
        + line("Parsed label", shown["parsed_word"], "parsed")
        + line("Gold label", shown["gold_word"], "gold")
        + line("Reward", f'{shown["reward"]:+.2f}', "reward")
        + line("Prompt tokens", shown["prompt_tokens"], "tokens")
    )


def playground_widget(model, tokenizer, rows_by_task: Mapping[str, Sequence[Mapping]],
                      demos_by_task: Mapping[str, Sequence[Mapping]] | None = None, *, max_k: int = 5):
    """An ipywidgets panel: task dropdown, example slider, k slider, a Run button, the output."""
    import ipywidgets as widgets

    names = list(rows_by_task)
    task_box = widgets.Dropdown(options=names, value=names[0], description="task")
    example_box = widgets.IntSlider(value=0, min=0, max=len(rows_by_task[names[0]]) - 1, description="example")
    k_box = widgets.IntSlider(value=0, min=0, max=max_k, description="k shots")
    button = widgets.Button(description="Run", button_style="primary")
    output = widgets.HTML(value="<i>Pick a task, an example and k, then press Run.</i>")
    state: dict = {}

    def on_task(change) -> None:
        example_box.max = max(0, len(rows_by_task[change["new"]]) - 1)
        example_box.value = min(example_box.value, example_box.max)

    def on_run(_=None) -> None:
        task_name = task_box.value
        demos = (demos_by_task or {}).get(task_name, ())
        shown = run_example(model, tokenizer, task_name, rows_by_task[task_name], example_box.value,
                            k=k_box.value, demonstrations=demos)
        state["last"] = shown
        output.value = render_html(shown)

    task_box.observe(on_task, names="value")
    button.on_click(on_run)
    panel = widgets.VBox([widgets.HBox([task_box, example_box, k_box, button]), output])
    panel.run = on_run  # lets a headless run (papermill) press the button
    panel.state = state
    return panel
