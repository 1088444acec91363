"""A torn (cut short) or corrupt (garbage bytes) model folder or GGUF file, or a file that is no model, is bad input:
exit 2, one line naming the file, what it is and the fix."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

from sinkscope.cli import main
from sinkscope.testing import write_gguf


def tear(path):
    os.truncate(path, path.stat().st_size // 2)


def garbage(path):
    path.write_bytes(os.urandom(path.stat().st_size))


COMMANDS = {  # (damaged folder, a whole folder, output folder) -> argv
    "probe": lambda folder, good, out: ["probe", str(folder), "--random-tokens", "--samples", "2", "--seq-len", "8"],
    "intervene": lambda folder, good, out: ["intervene", str(folder), "isolate", "--random-tokens", "--samples", "2",
                                            "--seq-len", "16"],
    "stream": lambda folder, good, out: ["stream", str(folder), "--samples", "2", "--seq-len", "16", "--budget", "8"],
    "demo": lambda folder, good, out: ["demo", "--model", str(folder), "--twin", "none", "--structural", "none",
                                       "--quiet", "--out", str(out)],
    "train --init-from": lambda folder, good, out: ["train", "--init-from", str(folder), "--tokenizer", str(good),
                                                    "--steps", "2", "--out", str(out), "--source", str(out.parent)],
    "train --tokenizer": lambda folder, good, out: ["train", "--tokenizer", str(folder), "--steps", "2",
                                                    "--out", str(out), "--source", str(out.parent)],
}
FILES = ("model.safetensors", "config.json", "tokenizer.json")


@pytest.mark.parametrize("damage", [tear, garbage], ids=["torn", "corrupt"])
@pytest.mark.parametrize("file", FILES)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_damaged_model_file_is_one_line_exit_2(saved_llama, tmp_path, capsys, command, file, damage):
    if command == "train --tokenizer" and file == "model.safetensors":
        pytest.skip("a tokenizer is read without the weights")
    folder = tmp_path / "model"
    shutil.copytree(saved_llama, folder)
    damage(folder / file)
    capsys.readouterr()
    assert main(COMMANDS[command](folder, saved_llama, tmp_path / "out")) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sinkscope ")]
    assert len(lines) == 1, lines
    assert f"{folder / file} is torn or corrupt" in lines[0]
    assert "copy the model folder again, or re-save it with save_pretrained" in lines[0]


GGUF_COMMANDS = dict(COMMANDS, **{  # a GGUF file is a model too, and demo takes one as its positional MODEL
    "demo MODEL": lambda model, good, out: ["demo", str(model), "--quiet", "--out", str(out)],
})


@pytest.mark.parametrize("damage", [tear, garbage], ids=["torn", "corrupt"])
@pytest.mark.parametrize("command", sorted(GGUF_COMMANDS))
def test_damaged_gguf_file_is_torn_in_one_line_exit_2(saved_llama, tmp_path, capsys, command, damage):
    path = write_gguf(tmp_path / "model.gguf")
    if damage is garbage:
        path.write_bytes(b"GGUF" + os.urandom(path.stat().st_size - 4))  # the magic survives, nothing else
    else:
        damage(path)
    capsys.readouterr()
    assert main(GGUF_COMMANDS[command](path, saved_llama, tmp_path / "out")) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sinkscope ")]
    assert len(lines) == 1, lines
    assert f"{path} is torn or corrupt" in lines[0] and "download or copy the GGUF file again" in lines[0]


NOT_MODELS = {  # file name, its bytes, the words that must name it
    "text": ("notes.txt", "def f():\n    return 1\n".encode(), "is a text file, not a model"),
    "json": ("config.json", b'{"model_type": "llama"}', "is a JSON file, not a model"),
    "empty": ("model.bin", b"", "is an empty file, not a model"),
    "binary": ("model.bin", bytes(range(256)) * 8, "is a binary file of unknown format, not a model"),
    "zip": ("model.zip", b"PK\x03\x04" + bytes(64), "is a zip archive, not a model"),
    "safetensors": ("model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + bytes(8),
                    "is a safetensors file without its folder's config.json"),
}


@pytest.mark.parametrize("kind", sorted(NOT_MODELS))
@pytest.mark.parametrize("command", sorted(GGUF_COMMANDS))
def test_a_file_that_is_not_a_model_is_called_what_it_is(saved_llama, tmp_path, capsys, command, kind):
    if command == "train --tokenizer" and kind == "safetensors":
        pytest.skip("covered by the other commands; the tokenizer check reads the same sniffing")
    name, data, words = NOT_MODELS[kind]
    path = tmp_path / name
    path.write_bytes(data)
    capsys.readouterr()
    assert main(GGUF_COMMANDS[command](path, saved_llama, tmp_path / "out")) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sinkscope ")]
    assert len(lines) == 1, lines
    assert f"{path} {words}" in lines[0] and "folder without" not in lines[0]


def test_a_folder_with_two_gguf_files_names_them(tmp_path, capsys):
    write_gguf(tmp_path / "a.Q4_0.gguf")
    write_gguf(tmp_path / "a.Q8_0.gguf")
    assert main(["probe", str(tmp_path), "--random-tokens"]) == 2
    assert "holds 2 GGUF files (a.Q4_0.gguf, a.Q8_0.gguf); pass one of them" in capsys.readouterr().err


def test_an_architecture_transformers_cannot_read_from_gguf_names_those_it_can(tmp_path, capsys):
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    path = write_gguf(tmp_path / "rwkv.gguf", architecture="rwkv6")
    assert main(["probe", str(path), "--random-tokens"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a 'rwkv6' model, which transformers cannot read from GGUF" in err
    assert all(name in err for name in GGUF_SUPPORTED_ARCHITECTURES if name not in ("general", "tokenizer"))


def test_without_the_gguf_package_one_line_names_the_extra(tmp_path, capsys, monkeypatch):
    path = write_gguf(tmp_path / "model.gguf")
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now raises ImportError
    assert main(["probe", str(path), "--random-tokens"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'sinkscope[gguf]'" in err
