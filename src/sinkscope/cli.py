"""The ``sinkscope`` command line. Flags are generated from the dataclass configs in config.py.

Each subcommand is a :class:`~sinkscope.commands.Command`: a config dataclass, positional arguments and
a function that takes the built config. A nested dataclass field contributes its own fields as flags (``--seq-len``,
not ``--data.seq-len``). ``--config FILE.yaml`` supplies values; flags given on the command line win.
Any :class:`SinkscopeError` prints one line and exits with code 2 (``--debug`` shows the traceback). A reader
that stops reading (``sinkscope criteria | head``) ends the command quietly, with status 141 as Unix tools do.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import typing
from pathlib import Path

from .commands import COMMANDS, Command
from .config import build, load_yaml
from .errors import SinkscopeError
from .files import check_output


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _leaf_fields(cls: type, path: tuple[str, ...] = ()):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _leaf_fields(tp, path + (f.name,))
        elif f.metadata.get("cli", True):
            yield path + (f.name,), f, tp


# The --help sections, in order. A flag's section is its nested config's (``load`` -> model), else its name's;
# any other flag says what to measure. Decision criteria are flags too, but `sinkscope criteria` lists them.
HELP_GROUPS = ("model", "data", "what to measure", "training", "output")
SECTION_GROUP = {"load": "model", "data": "data", "model": "model", "optim": "training"}
NAME_GROUP = {"model": "model", "twin": "model", "structural": "model", "data": "data", "samples": "data",
              "seq_len": "data", "batch_size": "data", "bos": "data", "seed": "data", "out": "output",
              "quiet": "output"}
METAVARS = {int: "N", float: "X", str: "TEXT"}  # placeholders of flags without a default
HELP_POSITION = 26  # column where a flag's help starts: wide enough for most flags, narrow enough to leave room


def _group(path: tuple[str, ...]) -> str:
    return SECTION_GROUP.get(path[0]) if len(path) > 1 else NAME_GROUP.get(path[0], "what to measure")


def _metavar(tp) -> str:
    """N, X, TEXT or LIST for a field's type (``int | None`` is an N)."""
    if typing.get_origin(tp) is tuple:
        return "LIST"
    given = [arg for arg in typing.get_args(tp) if arg is not type(None)] or [tp]
    return METAVARS.get(given[0], "TEXT")


def _is_criterion(f: dataclasses.Field) -> bool:
    return "source" in f.metadata  # criteria.rule: every decision rule names where its value comes from


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per leaf field of ``cls``, its help being the field's reason, grouped by what it sets."""
    groups = {name: parser.add_argument_group(name) for name in HELP_GROUPS}
    groups["output"].add_argument("--config", metavar="FILE", help="YAML file of values; flags given here win")
    criteria = 0
    for path, f, tp in _leaf_fields(cls):
        dest = "cfg__" + "__".join(path)
        hidden = _is_criterion(f)
        criteria += hidden
        why = argparse.SUPPRESS if hidden else f.metadata.get("why", "")
        group = groups[_group(path) or "what to measure"]
        default = f.default if f.default is not dataclasses.MISSING else None
        if tp is bool:
            if default:  # the flag turns it off, so its help says what "off" does (tests/unit/test_startup.py)
                off = why if hidden else f.metadata.get("off") or f"turn off: {why}"
                group.add_argument(_flag("no_" + f.name), dest=dest, action="store_const", const=False,
                                   default=None, help=off)
            else:
                group.add_argument(_flag(f.name), dest=dest, action="store_const", const=True, default=None, help=why)
            continue
        choices = f.metadata.get("choices")
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        if choices:  # argparse lists the choices where a placeholder would stand
            group.add_argument(_flag(f.name), dest=dest, default=None, choices=choices,
                               help=why if hidden else f"{why} (default: {shown})")
        else:  # the placeholder is the default value, which keeps most flags on one line
            group.add_argument(_flag(f.name), dest=dest, default=None, help=why,
                               metavar=_metavar(tp) if shown is None or shown == "" else str(shown))
    if criteria:
        parser.epilog = (f"Values shown are defaults. `sinkscope criteria` lists the {criteria} decision criteria, "
                         "also set by flag (--sink-ratio-min 3) or under 'criteria:' in --config YAML.")


def config_from_args(cls: type, args: argparse.Namespace):
    """Merge --config YAML values and explicit flags into a validated ``cls`` instance."""
    values = load_yaml(args.config) if getattr(args, "config", None) else {}
    for path, _, _ in _leaf_fields(cls):
        value = getattr(args, "cfg__" + "__".join(path))
        if value is None:
            continue
        node = values
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return build(cls, values)


def _usage(name: str, kwargs: dict) -> str:
    """A positional as the short usage line shows it (the options are listed, grouped, below it)."""
    shown = kwargs.get("metavar") or name
    return f"{shown} [{shown} ...]" if kwargs.get("nargs") == "+" else shown


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sinkscope", description="Find, explain and control attention sinks.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        usage = " ".join(["%(prog)s [options]"] + [_usage(n, kw) for n, kw in command.positionals if not n.startswith("-")])
        p = sub.add_parser(command.name, help=command.help, description=command.help, usage=usage,
                           formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=HELP_POSITION))
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        for name, kwargs in command.positionals:
            p.add_argument(name, **kwargs)
        if command.config is not None:
            add_config_flags(p, command.config_class())
        p.set_defaults(_command=command)
    return parser


def _quiet_libraries() -> None:
    """Our own progress bars and one-line errors replace the libraries' chatter (read when they load)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF reader draws a plain tqdm bar of its own
    if "transformers" in sys.modules:  # already loaded (tests, notebooks): the variables come too late
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _main(argv)
        finally:  # a short output is still buffered when the command returns: it must meet the pipe here
            sys.stdout.flush()
    except BrokenPipeError:
        # stdout's reader is gone (`| head`): stop as Unix tools do on SIGPIPE. Point stdout at /dev/null, so
        # that the interpreter's last flush of the unwritten rest cannot raise a second time at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _main(argv: list[str] | None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    command: Command = args._command
    _quiet_libraries()
    try:
        config = config_from_args(command.config_class(), args) if command.config is not None else None
        for out in (getattr(config, "out", None), getattr(args, "output", None) and Path(args.output).parent):
            if out:  # before the model loads: a bad --out must not cost a run
                check_output(out)
        code = command.run(args, config)
    except SinkscopeError as err:
        if args.debug:
            raise
        print(f"sinkscope {command.name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sinkscope {command.name}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        if args.debug:
            raise
        print(f"sinkscope {command.name}: error: out of memory; lower --batch-size or --seq-len", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
