"""A torn (cut short) or corrupt (garbage bytes) model folder is bad input: exit 2, one line naming the file and the fix."""

from __future__ import annotations

import os
import shutil

import pytest

from sinkscope.cli import main


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
