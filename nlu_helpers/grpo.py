"""GRPO (TRL's ``GRPOTrainer``) with the paper's reward: the peer our PPO is compared with.

No value head: each answer's advantage is its reward minus the mean of the answers
sampled for the same prompt (over their standard deviation). Generation stops at
``</Judgement>`` as in PPO, and LoRA comes from the same :class:`~nlu_helpers.ppo.PPOConfig`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch

from nlu_helpers import models
from nlu_helpers import rewards as rewards_lib
from nlu_helpers.parsing import parse_answer
from nlu_helpers.policy import lora_settings
from nlu_helpers.ppo import PAPER, PPOConfig
from nlu_helpers.prompts import JUDGEMENT_CLOSE
from nlu_helpers.tasks import Task, get_task

if TYPE_CHECKING:  # pragma: no cover
    from peft import PeftModel


def grpo_reward_function(task: str | Task, config: rewards_lib.RewardConfig = rewards_lib.PAPER) -> Callable[..., list[float]]:
    """A TRL reward function giving :func:`nlu_helpers.rewards.reward` for every completion.

    TRL calls it as ``f(prompts=..., completions=..., completion_ids=..., **columns)`` where
    every data set column arrives as a list with one entry per completion; we put the rows
    back together and score each completion against its own row. Accuracy and the
    unparseable rate are logged through TRL's ``log_metric`` when it is given.
    """
    task = get_task(task)
    trl_extras = {"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric", "environments"}

    def reward_function(prompts: list, completions: list, **columns: Any) -> list[float]:
        log_metric = columns.get("log_metric")
        data_columns = {k: v for k, v in columns.items() if k not in trl_extras}
        rows = [dict(zip(data_columns, values)) for values in zip(*data_columns.values())]
        if len(rows) != len(completions):
            raise ValueError(f"got {len(completions)} completions but {len(rows)} data rows; keep the label column in the data set")
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        scores = [rewards_lib.reward(task, text, row, config) for text, row in zip(texts, rows)]
        predictions = [parse_answer(task, text, strict=True) for text in texts]
        if callable(log_metric):
            log_metric("accuracy", float(np.mean([p == r["label"] for p, r in zip(predictions, rows)])))
            log_metric("unparseable", float(np.mean([p is None for p in predictions])))
        return scores

    reward_function.__name__ = f"reward_{task.name.replace('-', '_')}"
    return reward_function


def train_grpo(
    model: str,
    task: str | Task,
    train_rows: Sequence[Mapping] | Any,
    *,
    output_dir: str | os.PathLike,
    steps: int = 20,
    learning_rate: float = 1e-4,
    prompts_per_step: int = 2,
    num_generations: int = 8,
    max_new_tokens: int = 16,
    temperature: float = 0.7,
    beta: float = 0.0,
    config: PPOConfig = PAPER,
    sft_adapter: str | os.PathLike | None = None,
    seed: int = 0,
    callbacks: Sequence[Any] = (),
    **grpo_args: Any,
) -> tuple["PeftModel", list[dict]]:
    """GRPO (TRL's ``GRPOTrainer``) with the paper's reward, for comparison with our PPO.

    Each step samples ``num_generations`` answers for each of ``prompts_per_step`` prompts,
    scores them with the reward table, and uses each answer's reward minus its group's
    mean (divided by the group's std) as the advantage of all its tokens: no value head,
    no per-token KL in the reward (``beta`` > 0 adds a KL loss term instead). LoRA comes
    from ``config``'s ``lora_*`` fields. Generation stops at ``</Judgement>`` as in PPO.
    Returns the trained PEFT model and TRL's log history.
    """
    import datasets
    from trl import GRPOConfig, GRPOTrainer

    task = get_task(task)
    tokenizer = models.load_tokenizer(model)
    rows = [dict(r) for r in train_rows]
    dataset = datasets.Dataset.from_list([{**r, "prompt": task.build_prompt(r)} for r in rows])
    torch.manual_seed(seed)
    if sft_adapter is None:
        policy = models.add_lora(models.load_model(model), lora_settings(config))
    else:
        policy = models.load_model(model, adapter=sft_adapter, trainable_adapter=True)
    # TRL builds its GenerationConfig without our stop string and calls generate() without a
    # tokenizer, which stop strings need; hand the tokenizer to this model's generate().
    plain_generate = policy.generate

    def generate_with_stop(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("tokenizer", tokenizer)
        if kwargs.get("generation_config") is not None:
            kwargs["generation_config"].stop_strings = [JUDGEMENT_CLOSE]
        return plain_generate(*args, **kwargs)

    policy.generate = generate_with_stop  # type: ignore[method-assign]
    use_cpu = models.pick_device("auto").type == "cpu"
    args = GRPOConfig(
        output_dir=str(output_dir), max_steps=steps, learning_rate=learning_rate, lr_scheduler_type="constant",
        per_device_train_batch_size=prompts_per_step * num_generations, num_generations=num_generations,
        gradient_accumulation_steps=1, max_completion_length=max_new_tokens, temperature=temperature, top_k=0, top_p=1.0,
        beta=beta, logging_steps=1, save_strategy="no", report_to="none", seed=seed, use_cpu=use_cpu,
        bf16=not use_cpu and models.pick_dtype("auto") == torch.bfloat16, disable_dropout=True,
        **grpo_args,
    )
    trainer = GRPOTrainer(
        model=policy, reward_funcs=grpo_reward_function(task, config.reward), args=args, train_dataset=dataset,
        processing_class=tokenizer, callbacks=list(callbacks),
    )
    trainer.train()
    policy.generate = plain_generate  # type: ignore[method-assign]
    return trainer.model, list(trainer.state.log_history)
