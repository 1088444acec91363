"""HF export/import parity, HeadNorm on a plain Llama, and probe loading every variant's folder."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import sinkscope
from sinkscope.testing import tiny_sinkscope_config
from sinkscope.errors import SinkscopeError
from sinkscope.train import (
    VARIANTS,
    add_headnorm,
    build_model,
    from_llama,
    to_llama,
)
from sinkscope.train.export import export_model


tiny = tiny_sinkscope_config


def trained_like(model):
    """Perturb every weight so parity is not checked on the init's special structure (norms at 1)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture
def tokenizer(tmp_path, monkeypatch):
    from sinkscope.train.data import train_tokenizer

    text = "".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(300))
    return train_tokenizer([text], 60, tmp_path / "cache")


def test_softmax_exports_to_plain_llama_with_parity():
    ours = trained_like(build_model(tiny())).eval()
    llama = to_llama(ours).eval()
    assert type(llama).__name__ == "LlamaForCausalLM"
    ids = torch.randint(0, 60, (3, 20))
    with torch.no_grad():
        diff = (ours(input_ids=ids).logits - llama(input_ids=ids).logits).abs().max().item()
    assert diff <= 1e-5


def test_llama_imports_with_parity_and_headnorm_calibrated():
    cfg = transformers.LlamaConfig(vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    llama = trained_like(transformers.LlamaForCausalLM(cfg)).eval()
    ids = torch.randint(0, 60, (2, 16))
    ours = from_llama(llama).eval()
    with torch.no_grad():
        assert (ours(input_ids=ids).logits - llama(input_ids=ids).logits).abs().max().item() <= 1e-5
    headnorm = from_llama(llama, variant="headnorm", seed=5).eval()
    added = add_headnorm(llama, seed=5).eval()  # same calibration, through hooks on the plain Llama
    for ours_layer, llama_layer in zip(headnorm.model.layers, added.model.layers):
        torch.testing.assert_close(ours_layer.self_attn.head_norm.weight, llama_layer.self_attn.head_norm.weight)
    with torch.no_grad():
        torch.testing.assert_close(headnorm(input_ids=ids).logits, added(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
        # and HeadNorm really changes the function
        assert (headnorm(input_ids=ids).logits - ours(input_ids=ids).logits).abs().max() > 1e-3
    with pytest.raises(SinkscopeError, match="continues as softmax or headnorm"):
        from_llama(llama, variant="sigmoid")


def test_add_headnorm_model_continues_training():
    cfg = transformers.LlamaConfig(vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2)
    model = add_headnorm(transformers.LlamaForCausalLM(cfg))
    ids = torch.randint(0, 60, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    assert model.model.layers[1].self_attn.head_norm.weight.grad is not None
    assert any("head_norm" in k for k in model.state_dict())
    with pytest.raises(SinkscopeError, match="already has a head_norm"):
        add_headnorm(model)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_round_trips_and_probe_loads_its_folder(variant, tmp_path, tokenizer):
    model = trained_like(build_model(tiny(variant, qk_norm=variant == "gated"))).eval()
    folder = export_model(model, tokenizer, tmp_path / variant)
    card = json.loads((folder / "sinkscope.json").read_text())
    assert card["variant"] == variant
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == ("llama" if variant == "softmax" else "sinkscope")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.randint(3, 60, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    direct = sinkscope.probe(model, ids, chain=False)
    from_folder = sinkscope.probe(str(folder), ids, chain=False)
    assert from_folder["layer_sink_score"] == pytest.approx(direct["layer_sink_score"], abs=1e-5)
    assert from_folder["model"]["n_layers"] == 2


def test_a_model_without_rope_saves_as_sinkscope_and_reloads_without_rope(tmp_path, tokenizer):
    model = trained_like(build_model(tiny(rope=False))).eval()
    with pytest.raises(SinkscopeError, match="no rope"):
        to_llama(model)
    folder = export_model(model, tokenizer, tmp_path / "nope")
    assert json.loads((folder / "config.json").read_text())["model_type"] == "sinkscope"
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert loaded.config.rope is False
    ids = torch.randint(3, 60, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_sigmoid_probe_reports_sigmoid_weights():
    """Probe's captured attention for the sigmoid variant equals sigmoid(q.k/sqrt(D) - log T) to token 0."""
    model = trained_like(build_model(tiny("sigmoid"))).eval()
    ids = torch.randint(3, 60, (2, 10))
    captured = sinkscope.probe(model, ids, chain=False)["sink_score"]  # (L, H)
    layer0 = model.model.layers[0]
    x = layer0.input_layernorm(model.model.embed_tokens(ids))
    q = layer0.self_attn.q_proj(x).view(2, 10, 4, 8).transpose(1, 2)
    k = layer0.self_attn.k_proj(x).view(2, 10, 2, 8).transpose(1, 2).repeat_interleave(2, 1)
    cos, sin = model.model.rotary_emb(x, torch.arange(10)[None])
    from sinkscope.train.model import apply_rotary

    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    logits = (q @ k[:, :, :1].transpose(-1, -2)).squeeze(-1) / 8 ** 0.5  # (B, H, T) to key 0
    expected = torch.sigmoid(logits - torch.log(torch.tensor(10.0)))[:, :, 1:].mean((0, 2))
    assert captured[0] == pytest.approx(expected.tolist(), abs=1e-5)


BLOCK_SINKSCOPE = """
import sys
class NoSinkscope:
    def find_spec(self, name, path=None, target=None):
        if name == "sinkscope" or name.startswith("sinkscope."):
            raise ImportError("sinkscope is not installed here")
sys.meta_path.insert(0, NoSinkscope())
"""


def test_run_folders_load_with_remote_code_where_sinkscope_cannot_be_imported(tmp_path, tokenizer):
    """Every non-Llama folder (and the embedded HeadNorm organism) loads by auto_map alone, with the same logits."""
    import subprocess
    import sys

    from sinkscope.models import embedded_path

    ids = torch.randint(3, 60, (2, 12))
    expected = {}
    for variant, extra in [("headnorm", {}), ("gated", {"qk_norm": True}), ("sigmoid", {}), ("sink_logit", {}),
                           ("softmax", {"rope": False})]:
        model = trained_like(build_model(tiny(variant, **extra))).eval()
        folder = export_model(model, tokenizer, tmp_path / f"{variant}-{len(expected)}")
        assert json.loads((folder / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"] == \
            "modeling_sinkscope.SinkscopeForCausalLM"
        with torch.no_grad():
            expected[str(folder)] = model(input_ids=ids).logits
    organism = embedded_path("organism-headnorm")
    with torch.no_grad():
        organism_ids = torch.randint(3, 60, (2, 12))
        expected[str(organism)] = transformers.AutoModelForCausalLM.from_pretrained(organism).eval()(
            input_ids=organism_ids).logits
    torch.save({"ids": ids, "organism_ids": organism_ids, "expected": expected, "organism": str(organism)},
               tmp_path / "expected.pt")
    plain = export_model(build_model(tiny()), tokenizer, tmp_path / "softmax")
    assert "auto_map" not in json.loads((plain / "config.json").read_text())
    assert not list(plain.glob("*.py"))
    code = BLOCK_SINKSCOPE + f"""
import torch, transformers
try:
    import sinkscope
    raise SystemExit("sinkscope was importable")
except ImportError:
    pass
data = torch.load({str(tmp_path / "expected.pt")!r})
for folder, logits in data["expected"].items():
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    ids = data["organism_ids"] if folder == data["organism"] else data["ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, logits, atol=1e-5, rtol=1e-5)
print("loaded", len(data["expected"]))
"""
    env = {**__import__("os").environ, "HF_MODULES_CACHE": str(tmp_path / "hf-modules"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["loaded", "6"]


def test_embedded_headnorm_carries_the_current_model_files():
    from sinkscope.models import embedded_path
    from sinkscope.train.export import AUTO_MAP, REMOTE_CODE

    folder = embedded_path("organism-headnorm")
    assert json.loads((folder / "config.json").read_text())["auto_map"] == AUTO_MAP
    for name, source in REMOTE_CODE.items():  # after editing model.py: sinkscope.train.export.add_remote_code(folder)
        assert (folder / name).read_bytes() == source.read_bytes(), name
