"""Test-wide settings: nothing in the suite may reach the Hugging Face hub."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module whose tests start several processes of their own."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    """The tiny test model's tokenizer (the real SmolLM2 one); a module may define its own."""
    from nlu_helpers.models import TINY_MODEL, load_tokenizer

    return load_tokenizer(TINY_MODEL)


@pytest.fixture(scope="module")
def model():
    """The tiny random model on the CPU, in eval mode; a module may define its own."""
    import torch

    from nlu_helpers.models import TINY_MODEL, load_model

    torch.manual_seed(0)
    return load_model(TINY_MODEL, device="cpu")
