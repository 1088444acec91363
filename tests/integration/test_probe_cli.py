"""``sinkscope probe`` end to end on tiny saved models: inputs, result files, determinism and every error."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch
import transformers

from sinkscope.cli import main
from sinkscope.testing import MAX_POSITIONS, save_tiny, tiny_model

RUN = ["--seq-len", "16", "--samples", "5", "--batch-size", "2", "--no-chain"]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    save_tiny("llama", folder)  # its tokenizer prepends <s>
    return folder


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2")
    save_tiny("gpt2", folder)  # its tokenizer adds nothing
    return folder


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("texts")
    g = torch.Generator().manual_seed(0)
    words = ["attention", "sink", "token", "layer", "the", "of", "first", "query", "key", "value"]
    docs = [" ".join(words[i] for i in torch.randint(0, len(words), (n,), generator=g).tolist())
            for n in (30, 12, 45)]
    for i, doc in enumerate(docs):
        (folder / f"doc{i}.txt").write_text(doc)
    (folder / "all.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    ids = [torch.randint(3, 96, (n,), generator=g).tolist() for n in (10, 12, 7)]
    (folder / "ids.jsonl").write_text("".join(json.dumps({"input_ids": i}) + "\n" for i in ids))
    return folder


def _probe(capsys, *argv) -> dict:
    code = main(["probe", *map(str, argv)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured


def _result(out) -> dict:
    return json.loads((out / "probe.json").read_text())


def _error(capsys, *argv) -> str:
    """Run the CLI in-process; it must return 2 with exactly one line on stderr and no traceback."""
    code = main(["probe", *map(str, argv)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("sinkscope probe: error: "), err
    assert "Traceback" not in err
    return err


# ---------------------------------------------------------------- happy path and result files
def test_probe_writes_json_and_parquet_and_repeats_exactly(llama_dir, tmp_path, capsys):
    out1, out2 = tmp_path / "one", tmp_path / "two"
    printed = _probe(capsys, llama_dir, "--random-tokens", *RUN, "--seed", "3", "--out", out1).out
    assert "sink score by layer" in printed and "onset layer" in printed
    _probe(capsys, llama_dir, "--random-tokens", *RUN, "--seed", "3", "--out", out2)
    first, second = _result(out1), _result(out2)
    assert first["schema_version"] >= 1
    L, H = 2, 4
    assert len(first["sink_score"]) == L and all(len(row) == H for row in first["sink_score"])
    assert 0 <= first["sink_rate"] <= 100
    assert first["onset_layer"] is None or 0 <= first["onset_layer"] < L
    prov = first["provenance"]
    for key in ("model", "seed", "dtype", "device"):
        assert key in prov, key
    assert prov["seed"] == 3 and prov["dtype"] == "float32"
    strip = lambda r: {k: v for k, v in r.items() if k != "provenance"}
    assert strip(first) == strip(second)
    parquet = sorted(p.name for p in out1.glob("*.parquet"))
    assert "attention_by_position.parquet" in parquet and "hidden_by_position.parquet" in parquet
    for name in parquet:
        assert pq.read_table(out1 / name).equals(pq.read_table(out2 / name))
    other = tmp_path / "three"
    _probe(capsys, llama_dir, "--random-tokens", *RUN, "--seed", "4", "--out", other)
    assert _result(other)["sink_score"] != first["sink_score"]


def test_bfloat16_load_gives_float32_statistics_close_to_float32(llama_dir, tmp_path, capsys):
    scores = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        _probe(capsys, llama_dir, "--random-tokens", *RUN, "--dtype", dtype, "--out", out)
        result = _result(out)
        assert result["provenance"]["dtype"] == dtype
        scores[dtype] = torch.tensor(result["sink_score"], dtype=torch.float64)
    assert (scores["bfloat16"] - scores["float32"]).abs().max() < 0.03


@pytest.mark.parametrize("source", ["doc0.txt", ".", "all.jsonl"])
def test_text_sources(llama_dir, texts, tmp_path, capsys, source):
    out = tmp_path / "out"
    _probe(capsys, llama_dir, "--data", texts / source, *RUN, "--out", out)
    result = _result(out)
    assert result["data"]["sequences"] == 5 and result["data"]["max_len"] == 16
    assert result["data"]["source"] == str(texts / source)


def test_pretokenized_ids_are_used_as_given(llama_dir, texts, tmp_path, capsys):
    out = tmp_path / "out"
    _probe(capsys, llama_dir, "--data", texts / "ids.jsonl", *RUN, "--out", out)
    result = _result(out)
    assert result["data"]["sequences"] == 3 and result["data"]["max_len"] == 12  # no BOS added, no cutting


def test_bos_modes(gpt2_dir, llama_dir, texts, tmp_path, capsys):
    def score(model_dir, bos):
        out = tmp_path / f"{model_dir.name}-{bos}"
        _probe(capsys, model_dir, "--data", texts / "doc2.txt", *RUN, "--bos", bos, "--out", out)
        return _result(out)["sink_score"]

    assert score(gpt2_dir, "auto") == score(gpt2_dir, "never") != score(gpt2_dir, "always")
    assert score(llama_dir, "auto") == score(llama_dir, "always") != score(llama_dir, "never")


def test_left_padding_gives_the_numbers_of_right_padding(gpt2_dir, texts, tmp_path, capsys):
    results = {}
    for side in ("left", "right"):
        out = tmp_path / side
        _probe(capsys, gpt2_dir, "--data", texts / ".", "--seq-len", "16", "--samples", "8", "--batch-size", "8",
               "--no-chain", "--padding-side", side, "--out", out)
        results[side] = torch.tensor(_result(out)["sink_score"])
    assert torch.allclose(results["left"], results["right"], atol=1e-5)


# ---------------------------------------------------------------- errors
def test_missing_local_folder(tmp_path, capsys):
    err = _error(capsys, tmp_path / "no-such-model", "--random-tokens")
    assert "does not exist" in err and "save_pretrained" in err


def test_unknown_hub_model_suggests_a_local_folder(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = _error(capsys, "sinkscope-nobody/no-such-model", "--random-tokens")
    assert "local folder" in err


def test_unsupported_architecture_lists_the_supported_and_how_to_register(tmp_path, capsys):
    transformers.BloomConfig(n_layer=1, hidden_size=16, n_head=2, vocab_size=32).save_pretrained(tmp_path)
    err = _error(capsys, tmp_path, "--random-tokens")
    assert "unsupported architecture 'bloom'" in err
    for family in ("bert", "gemma2", "gpt_neox", "llama", "phi3"):
        assert family in err
    assert "register_adapter(Adapter(" in err


def test_empty_data_file(llama_dir, tmp_path, capsys):
    path = tmp_path / "empty.txt"
    path.write_text("")
    assert "holds no text" in _error(capsys, llama_dir, "--data", path)


def test_binary_data_file(llama_dir, tmp_path, capsys):
    path = tmp_path / "blob.txt"
    path.write_bytes(bytes(range(256)) * 4)
    assert "not UTF-8" in _error(capsys, llama_dir, "--data", path)


def test_seq_len_past_the_models_positions(llama_dir, capsys):
    err = _error(capsys, llama_dir, "--random-tokens", "--seq-len", MAX_POSITIONS + 1, "--samples", "2")
    assert f"{MAX_POSITIONS} positions" in err and "--seq-len" in err


@pytest.mark.parametrize("position", ["16", "-17"])
def test_key_position_past_the_sequence(llama_dir, capsys, position):
    err = _error(capsys, llama_dir, "--random-tokens", "--seq-len", "16", "--samples", "2",
                 f"--sink-positions={position}")
    assert f"key position {position}" in err


def test_non_finite_attention_names_the_layer_and_head(tmp_path, capsys):
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].self_attn.q_proj.weight[8:16] = float("nan")  # query head 1 of layer 1
    model.save_pretrained(tmp_path)
    err = _error(capsys, tmp_path, "--random-tokens", *RUN)
    assert "non-finite attention in layer 1, head 1" in err


def test_non_finite_hidden_state_names_the_layer(tmp_path, capsys):
    model = tiny_model("gpt2")
    with torch.no_grad():
        model.transformer.h[1].mlp.c_proj.weight[0, 0] = float("inf")
    model.save_pretrained(tmp_path)
    err = _error(capsys, tmp_path, "--random-tokens", *RUN)
    assert "non-finite hidden state after layer 1" in err


def test_console_script_prints_one_line_without_a_traceback(tmp_path):
    """The real process: exit code 2 and one line (in-process --debug is covered in test_config_cli)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "sinkscope", "probe", str(tmp_path / "missing"), "--random-tokens"]
    plain = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=300)
    assert plain.returncode == 2
    assert plain.stderr.strip().count("\n") == 0 and "does not exist" in plain.stderr
    assert "Traceback" not in plain.stderr


@pytest.mark.parametrize("family", ["gpt_oss", "deepseek_v3"])
def test_probe_runs_end_to_end_on_moe_families_with_the_chain_on(family, tmp_path, capsys):
    """gpt-oss has no SDPA path and a learned sink; DeepSeek has latent attention: both load, probe and explain,
    with the same chain as a dense model."""
    save_tiny(family, tmp_path / "model")
    shown = " ".join(_probe(capsys, tmp_path / "model", "--seq-len", "16", "--samples", "4", "--batch-size", "2",
                            "--out", tmp_path / "out").out.split())  # the console wraps long lines
    result = _result(tmp_path / "out")
    assert ("learned sink (head mean)" in shown and "Learned sink: heads send" in shown) == (family == "gpt_oss")
    assert "chain_skipped" not in result and result["chain"]["verdict"] in shown
    assert result["expert_neurons"]["router"] and result["learned_sink_mass"]
    assert result["model"]["learned_sink"] == (family == "gpt_oss")


OUT_COMMANDS = {  # argv of each command that writes under --out, short of the --out itself
    "probe": ["probe", "organism-softmax", "--random-tokens"],
    "intervene": ["intervene", "organism-softmax", "isolate"],
    "stream": ["stream", "organism-softmax"],
    "demo": ["demo"],
    "train": ["train", "--steps", "1"],
    "compare": ["compare", "runs/none"],
}


@pytest.mark.parametrize("command", sorted(OUT_COMMANDS))
def test_out_that_is_a_file_or_cannot_be_created_is_one_line_exit_2(tmp_path, capsys, command):
    """Checked before anything loads: the model names here would take seconds to minutes to run."""
    taken = tmp_path / "taken"
    taken.write_text("a file the user keeps")
    cases = {taken: f"--out {taken}: {taken} exists and is a file; pass a folder",
             taken / "sub": f"--out {taken / 'sub'} cannot be created: {taken} is a file, not a folder"}
    if command == "compare":  # compare writes a .json file: only its folder must be creatable
        cases = {taken / "compare.json": f"cannot be created: {taken} is a file, not a folder"}
    for out, words in cases.items():
        assert main([*OUT_COMMANDS[command], "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
    assert taken.read_text() == "a file the user keeps"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
