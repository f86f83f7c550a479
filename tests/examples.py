"""Test fixtures: the package's sample rows, one per task."""

from nlu_helpers.samples import SAMPLE_ROWS as EXAMPLES  # noqa: F401


def teach(model, prompt_ids: list[int], answer_ids: list[int], steps: int = 60):
    """Train ``model`` in place to write ``answer_ids`` after ``prompt_ids`` (loss on the answer only); eval mode after."""
    import torch

    model.train()
    ids, labels = torch.tensor([prompt_ids + answer_ids]), torch.tensor([[-100] * len(prompt_ids) + answer_ids])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()
