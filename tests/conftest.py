"""Shared test set-up. The tiny-model builders live in :mod:`sinkscope.testing` so any test can import them."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the network; hub failures must be fast
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from sinkscope.testing import FAMILIES, save_tiny, tiny_model


@pytest.fixture(params=sorted(FAMILIES))
def family(request) -> str:
    """Every supported model family, one test per family."""
    return request.param


@pytest.fixture
def llama():
    """A tiny random-weight grouped-query llama (hidden 32, 2 layers, 4 query / 2 kv heads)."""
    return tiny_model("llama")


@pytest.fixture
def saved_llama(tmp_path_factory):
    """A tiny llama and tokenizer written by save_pretrained (safetensors), as a CLI user would pass them."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    save_tiny("llama", folder)  # with the tiny character tokenizer, which prepends <s>
    return folder


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield
