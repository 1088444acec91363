"""The ``sinkscope`` command line. Flags are generated from the dataclass configs in config.py.

Each subcommand is a :class:`~sinkscope.commands.Command`: a config dataclass, positional arguments and
a function that takes the built config. A nested dataclass field contributes its own fields as flags (``--seq-len``,
not ``--data.seq-len``). ``--config FILE.yaml`` supplies values; flags given on the command line win.
Any :class:`SinkscopeError` prints one line and exits with code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing

from .commands import COMMANDS, Command
from .config import build, load_yaml
from .errors import SinkscopeError


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


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per leaf field of ``cls``, its help being the field's reason."""
    parser.add_argument("--config", help="YAML file of config values; flags given here override it")
    for path, f, tp in _leaf_fields(cls):
        dest = "cfg__" + "__".join(path)
        why = f.metadata.get("why", "")
        if f.metadata.get("source"):
            why = f"{why} [{f.metadata['source']}]"
        default = f.default if f.default is not dataclasses.MISSING else None
        if tp is bool:
            if default:  # the flag turns it off, so its help says what "off" does (tests/unit/test_startup.py)
                parser.add_argument(_flag("no_" + f.name), dest=dest, action="store_const", const=False,
                                    default=None, help=f.metadata.get("off") or f"turn off: {why}")
            else:
                parser.add_argument(_flag(f.name), dest=dest, action="store_const", const=True, default=None,
                                    help=why)
            continue
        choices = f.metadata.get("choices")
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument(_flag(f.name), dest=dest, default=None, choices=choices, metavar=None if choices else
                            f.name.upper(), help=f"{why} (default: {shown})")


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


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sinkscope", description="Find, explain and control attention sinks.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
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
    if "transformers" in sys.modules:  # already loaded (tests, notebooks): the variables come too late
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    command: Command = args._command
    _quiet_libraries()
    try:
        config = config_from_args(command.config_class(), args) if command.config is not None else None
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
