"""The optimizer-step guards of ``distributed.apply_gradients`` on a small linear model (no processes needed)."""

import math

import torch

from nlu_helpers import distributed


class ScaledAccelerator:
    """The two things apply_gradients asks of an fp16 ``Accelerator``: a GradScaler, and unscaling (as accelerate does)."""

    def __init__(self, optimizer):
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
        self.optimizer = optimizer

    def unscale_gradients(self):
        self.scaler.unscale_(self.optimizer)

    def clip_grad_norm_(self, parameters, max_norm):
        self.unscale_gradients()
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)


class ScaledOptimizer:
    """accelerate's AcceleratedOptimizer under fp16: step through the scaler, then update the scale."""

    def __init__(self, optimizer, scaler):
        self.optimizer, self.scaler = optimizer, scaler

    def step(self):
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def zero_grad(self, set_to_none=True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state)


def test_fp16_overflow_backs_off_the_loss_scale_without_counting_as_a_skip():
    model = torch.nn.Linear(4, 1)
    inner = torch.optim.AdamW(model.parameters(), lr=1e-2)
    accelerator = ScaledAccelerator(inner)
    optimizer = ScaledOptimizer(inner, accelerator.scaler)
    before = [p.detach().clone() for p in model.parameters()]

    loss = model(torch.full((2, 4), 1e34)).sum()  # finite; its gradient times the 2^16 scale overflows float32
    accelerator.scaler.scale(loss).backward()
    assert math.isnan(distributed.apply_gradients(accelerator, model, optimizer, max_grad_norm=1.0, finite_loss=True))
    assert accelerator.scaler.get_scale() < 2.0**16  # the scale went down
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # and nothing was applied

    loss = model(torch.ones(2, 4)).sum()  # an ordinary step goes through, with the unscaled norm
    accelerator.scaler.scale(loss).backward()
    norm = distributed.apply_gradients(accelerator, model, optimizer, max_grad_norm=None, finite_loss=True)
    assert norm is not None and 0 < norm < 100
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_non_finite_weights_roll_back_with_the_optimizer_state():
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=float("inf"))  # any update makes the weights inf

    class Plain:  # an Accelerator without loss scaling
        scaler = None

        def unscale_gradients(self):
            pass

    before = [p.detach().clone() for p in model.parameters()]
    model(torch.ones(2, 4)).sum().backward()
    assert distributed.apply_gradients(Plain(), model, optimizer, max_grad_norm=None, finite_loss=True) is None
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not optimizer.state  # the moments of the step that blew up are gone too
