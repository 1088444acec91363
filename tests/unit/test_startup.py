"""The CLI starts without the ML stack, its help reads plainly, and the import graph runs one way."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sinkscope.commands import COMMANDS

SRC = Path(__file__).resolve().parents[2] / "src"
HEAVY = ("torch", "transformers", "matplotlib", "scipy", "pyarrow")


HELP_COLUMNS = "80"  # the classic terminal: argparse wraps every help to it
HELP_LINES = 100  # most lines a command's --help may take (issue 21)


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", COLUMNS=HELP_COLUMNS)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          check=False)


def test_every_help_answers_without_heavy_imports():
    """One process renders `sinkscope --help` and every `sinkscope <command> --help`, then lists what it imported."""
    argvs = [["--help"]] + [[c.name, "--help"] for c in COMMANDS]
    done = _python(f"""
import contextlib, io, json, sys
from sinkscope.cli import main
helps = []
for argv in {argvs!r}:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit:
            pass
    helps.append(out.getvalue())
print(json.dumps({{"heavy": [m for m in {HEAVY!r} if m in sys.modules], "helps": helps}}))
""")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["heavy"] == []
    assert all("usage: sinkscope" in text for text in result["helps"])
    assert len(result["helps"]) == len(COMMANDS) + 1
    lines = {argv[0]: len(text.splitlines()) for argv, text in zip(argvs, result["helps"])}
    assert max(lines.values()) <= HELP_LINES, lines


def test_help_groups_flags_by_what_they_set(capsys):
    from sinkscope.cli import main

    with pytest.raises(SystemExit):
        main(["probe", "--help"])
    text = capsys.readouterr().out
    sections = [text.index(f"\n{name}:\n") for name in ("model", "data", "what to measure", "output")]
    assert sections == sorted(sections)
    model, data, measure, output = (text[start:end] for start, end in zip(sections, sections[1:] + [len(text)]))
    assert "--dtype" in model and "--seq-len" in data and "--no-chain" in measure and "--out" in output
    assert "--onset-fraction" not in text and "--spike-token-ratio" not in text and "sinkscope criteria" in text


def test_import_sinkscope_is_cheap_and_registers_when_transformers_loads():
    headnorm = SRC / "sinkscope" / "assets" / "models" / "organism-headnorm"
    done = _python(f"""
import sys
import sinkscope
light = [m for m in {HEAVY!r} if m in sys.modules]
from transformers import AutoConfig, AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({str(headnorm)!r})
print(light, type(AutoConfig.from_pretrained({str(headnorm)!r})).__name__, type(model).__name__,
      "sinkscope.train.loop" in sys.modules)
""")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "SinkscopeConfig", "SinkscopeForCausalLM", "False"]


def test_registration_also_when_transformers_loaded_first():
    headnorm = SRC / "sinkscope" / "assets" / "models" / "organism-headnorm"
    done = _python(f"""
from transformers import AutoModelForCausalLM, LlamaForCausalLM
import sinkscope
print(type(AutoModelForCausalLM.from_pretrained({str(headnorm)!r})).__name__)
""")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "SinkscopeForCausalLM"


def test_no_help_line_reads_turn_off(capsys):
    from sinkscope.cli import main

    for command in COMMANDS:
        with pytest.raises(SystemExit):
            main([command.name, "--help"])
        text = capsys.readouterr().out
        assert "turn off:" not in text, command.name
        if command.name == "probe":
            assert "skip the causal chain" in " ".join(text.split())


def test_sinkscope_lazy_names_resolve():
    import sinkscope
    import sinkscope.probe as _  # noqa: F401  (importing the submodule must not replace the function)

    assert callable(sinkscope.probe) and sinkscope.ProbeResult.__name__ == "ProbeResult"
    assert sinkscope.adapters.supported_model_types()


def test_light_copies_match_their_sources():
    from sinkscope.config import EXPERIMENT_KINDS
    from sinkscope.intervene import EXPERIMENTS
    from sinkscope.train.config import VARIANTS as FLAG_VARIANTS
    from sinkscope.train.model import VARIANTS

    assert FLAG_VARIANTS == VARIANTS
    assert sorted(EXPERIMENTS) == list(EXPERIMENT_KINDS)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_commands_does_not_import_cli_and_model_files_import_no_sinkscope():
    package = SRC / "sinkscope"
    assert not {".cli", "sinkscope.cli"} & _imports(package / "commands.py")
    for name in ("model.py", "configuration_sinkscope.py"):
        imported = _imports(package / "train" / name)
        assert all(m in (".configuration_sinkscope",) or not m.startswith((".", "sinkscope")) for m in imported), name


@pytest.mark.parametrize("argv", [["criteria"], ["--help"], ["probe", "--help"]], ids=" ".join)
def test_a_reader_that_stops_early_ends_the_command_quietly(argv):
    """`sinkscope criteria | head`: the pipe's reader is gone before the command writes, so every write fails;
    the command stops with 141 (128 + SIGPIPE, as Unix tools do) and no traceback. argparse swallows a failed
    write of its own help, so --help ends with 0."""
    read, write = os.pipe()
    os.close(read)  # closed before the command starts: its first write meets a broken pipe, every time
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    try:
        done = subprocess.run([sys.executable, "-m", "sinkscope", *argv], stdout=write, stderr=subprocess.PIPE,
                              text=True, env=env, timeout=300, check=False)
    finally:
        os.close(write)
    assert done.stderr == "" and done.returncode == (0 if "--help" in argv else 141), done.stderr
