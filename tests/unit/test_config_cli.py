"""Configs are data and the CLI is generated from them: flags, YAML, validation, one-line errors."""

from __future__ import annotations

import dataclasses

import pytest

from sinkscope.cli import _leaf_fields, config_from_args, main, make_parser
from sinkscope.config import CaptureConfig, DataConfig, LoadConfig, ProbeConfig, build
from sinkscope.errors import SinkscopeError


def _probe_config(*argv: str) -> ProbeConfig:
    args = make_parser().parse_args(["probe", "some-model", *argv])
    return config_from_args(ProbeConfig, args)


def test_every_probe_field_has_a_reason_and_a_flag():
    parser = make_parser()
    sub = parser._subparsers._group_actions[0].choices["probe"]
    flags = {s for action in sub._actions for s in action.option_strings}
    for path, f, _ in _leaf_fields(ProbeConfig):
        assert f.metadata.get("why"), f"{'.'.join(path)} has no reason"
        name = f.name.replace("_", "-")
        assert f"--{name}" in flags or f"--no-{name}" in flags, f"no flag for {'.'.join(path)}"
    for section in (LoadConfig, DataConfig, CaptureConfig, ProbeConfig):
        assert all(f.metadata.get("why") for f in dataclasses.fields(section))


@pytest.mark.parametrize("command", ["probe", "intervene", "demo", "train", "stream"])
def test_every_command_that_judges_takes_the_criteria_as_flags_listed_by_criteria(command, capsys):
    """Criteria are settable flags on every judging command, kept out of its --help, and `sinkscope criteria`
    lists each with its value, why and source."""
    from sinkscope.criteria import Criteria

    sub = make_parser()._subparsers._group_actions[0].choices[command]
    helps = {s: action.help for action in sub._actions for s in action.option_strings}
    for f in dataclasses.fields(Criteria):
        flag = "--" + f.name.replace("_", "-")
        assert flag in helps, f"{command} has no {flag}"
        assert helps[flag] == "==SUPPRESS==", f"{command} --help shows {flag}"
    assert main(["criteria"]) == 0
    listed = capsys.readouterr().out
    for f in dataclasses.fields(Criteria):
        entry = (f"--{f.name.replace('_', '-')} {f.default}\n    why: {f.metadata['why']}\n"
                 f"    source: {f.metadata['source']}\n")
        assert entry in listed, f.name


def test_criteria_command_shows_the_values_a_yaml_sets(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("criteria:\n  sink_ratio_min: 3.5\n")
    assert main(["criteria", "--config", str(path)]) == 0
    assert "3.5 (default 2.0)" in capsys.readouterr().out
    assert main(["criteria", "--config", "configs/criteria-paper.yaml"]) == 0
    assert "paper (default scale-free)" in capsys.readouterr().out


def test_criteria_are_frozen_recorded_and_validated(tmp_path):
    from sinkscope.chain import check_criteria
    from sinkscope.criteria import Criteria, describe

    with pytest.raises(dataclasses.FrozenInstanceError):
        Criteria().sink_ratio_min = 1.0
    assert {row["name"] for row in describe()} == {f.name for f in dataclasses.fields(Criteria)}
    assert all(row["why"] and row["source"] for row in describe())
    with pytest.raises(SinkscopeError, match="--spike-persistence must lie in"):
        check_criteria(Criteria(spike_persistence=1.5))
    with pytest.raises(SinkscopeError, match="--sink-ratio-min must be non-negative"):
        check_criteria(Criteria(sink_ratio_min=-1.0))
    with pytest.raises(SinkscopeError, match="'criteria.rules' must be one of scale-free, paper"):
        build(ProbeConfig, {"criteria": {"rules": "loose"}})


def test_flags_are_typed_and_land_in_their_section():
    cfg = _probe_config("--seq-len", "32", "--samples", "5", "--random-tokens", "--dtype", "bfloat16",
                        "--sink-positions", "0,-1", "--no-chain", "--padding-side", "left", "--bos", "never")
    assert cfg.data.seq_len == 32 and isinstance(cfg.data.seq_len, int)
    assert cfg.data.samples == 5 and cfg.data.random_tokens is True
    assert cfg.load.dtype == "bfloat16" and cfg.capture.sink_positions == (0, -1)
    assert cfg.chain is False and cfg.data.padding_side == "left" and cfg.data.bos == "never"


def test_defaults_when_no_flag_is_given():
    assert _probe_config() == ProbeConfig()


def test_yaml_values_apply_and_flags_win(tmp_path):
    path = tmp_path / "preset.yaml"
    path.write_text("data:\n  seq_len: 48\n  samples: 7\ncriteria:\n  sink_rate_eps: 0.5\n  sink_ratio_min: 3\n")
    cfg = _probe_config("--config", str(path), "--samples", "9", "--sink-ratio-min", "2.5")
    assert (cfg.data.seq_len, cfg.data.samples, cfg.criteria.sink_rate_eps) == (48, 9, 0.5)
    assert cfg.criteria.sink_ratio_min == 2.5  # the flag wins over the file


@pytest.mark.parametrize(("values", "message"), [
    ({"data": {"seq_lenn": 3}}, "unknown config key 'data.seq_lenn'; known keys: data.data"),
    ({"load": {"dtype": "float8"}}, "'load.dtype' must be one of float32, bfloat16, float16"),
    ({"data": {"seq_len": "long"}}, "'data.seq_len' must be int"),
    ({"data": {"seq_len": 2.5}}, "'data.seq_len' must be int"),
    ({"chain": "maybe"}, "'chain' must be true or false"),
    ({"data": 3}, "'data' must be a mapping"),
])
def test_bad_values_are_refused_with_the_key_named(values, message):
    with pytest.raises(SinkscopeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build(ProbeConfig, values)


def test_bad_yaml_file_gives_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("data: [unclosed\n")
    assert main(["probe", "x", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sinkscope probe: error: config file") and "YAML" in err


def test_cli_error_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    missing = str(tmp_path / "no-model-here")
    assert main(["probe", missing, "--random-tokens"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err and "Traceback" not in err
    with pytest.raises(SinkscopeError, match="does not exist"):
        main(["--debug", "probe", missing, "--random-tokens"])
    with pytest.raises(SinkscopeError):
        main(["probe", missing, "--random-tokens", "--debug"])


def test_choices_are_checked_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        make_parser().parse_args(["probe", "m", "--padding-side", "middle"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_dims_and_layers_parse_or_name_the_flag():
    import pytest

    from sinkscope.config import parse_dims, parse_layers
    from sinkscope.errors import SinkscopeError

    assert parse_dims("112,1415") == (112, 1415)
    assert parse_layers("all", (0, 1)) is None and parse_layers(None, (0, 1)) == (0, 1)
    assert parse_layers("2,3", None) == (2, 3)
    with pytest.raises(SinkscopeError, match="--dims must be auto or comma-separated integers"):
        parse_dims("112,x")
    with pytest.raises(SinkscopeError, match="--layers must be 'all'"):
        parse_layers("0;1", None)
