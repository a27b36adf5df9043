"""The runc-compatible command line: flag forms, arity, errors as one line, usage and version."""
import pytest

from capsa.errors import UsageError
from capsa.runtime import cli


def test_global_flags_before_subcommand_in_go_forms():
    opts, rest = cli.parse_flags(cli.GLOBAL_FLAGS, ["--root", "/r", "-log=/l", "--log-format", "json",
                                                    "--debug", "create", "--bundle", "b", "x"], True)
    assert opts == {"root": "/r", "log": "/l", "log_format": "json", "debug": True}
    assert rest == ["create", "--bundle", "b", "x"]


def test_command_flags_short_long_equals_and_repeatable():
    flags = cli.COMMANDS["exec"][3]
    opts, args = cli.parse_flags(flags, ["-e", "A=1", "--env=B=2", "-t", "--preserve-fds", "2",
                                         "ctr", "sh", "-c", "echo --env"], True)
    assert opts == {"env": ["A=1", "B=2"], "tty": True, "preserve_fds": 2}
    assert args == ["ctr", "sh", "-c", "echo --env"]


def test_flags_after_positional_for_ordinary_commands():
    opts, args = cli.parse_flags(cli.COMMANDS["delete"][3], ["ctr", "--force"], False)
    assert opts == {"force": True} and args == ["ctr"]


def test_kill_takes_numeric_signal_after_id():
    opts, args = cli.parse_flags(cli.COMMANDS["kill"][3], ["--all", "ctr", "9"], False)
    assert opts == {"all": True} and args == ["ctr", "9"]


@pytest.mark.parametrize("argv, message", [
    (["--nope"], "flag provided but not defined: --nope"),
    (["--bundle"], "flag needs an argument: --bundle"),
    (["--preserve-fds", "x"], "invalid value 'x' for --preserve-fds"),
])
def test_bad_flags_are_one_clear_usage_error(argv, message):
    with pytest.raises(UsageError) as info:
        cli.parse_flags(cli.COMMANDS["create"][3], argv, False)
    assert message in info.value.line()


def test_durations_like_go():
    assert cli.parse_duration("5s") == 5.0
    assert cli.parse_duration("1m30s") == 90.0
    assert abs(cli.parse_duration("100ms") - 0.1) < 1e-9
    with pytest.raises(UsageError):
        cli.parse_duration("5 parsecs")


def test_main_reports_errors_without_traceback(capsys, tmp_path):
    status = cli.main(["--root", str(tmp_path), "state", "no-such"])
    err = capsys.readouterr().err
    assert status == 1
    assert err == "capsa-runtime: container no-such does not exist (see capsa-runtime list)\n"


def test_main_missing_argument_names_it(capsys):
    assert cli.main(["start"]) == 2
    assert "start: missing <container-id>" in capsys.readouterr().err


def test_main_unknown_command(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "no such command 'frobnicate'" in capsys.readouterr().err


def test_json_log_line_written_on_error(tmp_path, capsys):
    log = tmp_path / "log.json"
    status = cli.main(["--log", str(log), "--log-format", "json", "--root", str(tmp_path),
                       "kill", "ghost", "9"])
    import json
    line = json.loads(log.read_text().splitlines()[-1])
    assert status == 1
    assert line["level"] == "error" and "ghost does not exist" in line["msg"] and "time" in line


def test_version_lines_podman_parses(capsys):
    assert cli.main(["--version"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "capsa-runtime version " + cli.VERSION
    assert lines[1] == "spec: " + cli.SPEC_VERSION


def test_every_command_has_usage_and_a_module():
    import importlib.util
    for name, (module, _, summary, flags) in cli.COMMANDS.items():
        assert summary and name in cli._ARITY
        assert "capsa-runtime " + name in cli.build_usage(name)


def test_rootless_flag_values(capsys, tmp_path):
    assert cli.main(["--rootless", "maybe", "--root", str(tmp_path), "list"]) == 2
    assert "invalid --rootless 'maybe'" in capsys.readouterr().err
    assert cli.main(["--rootless", "auto", "--root", str(tmp_path), "list", "-q"]) == 0


def test_ps_options_after_the_id_are_passed_on():
    opts, args = cli.parse_flags(cli.COMMANDS["ps"][3], ["--format", "json", "ctr", "-ef"], True)
    assert opts == {"format": "json"} and args == ["ctr", "-ef"]


def test_ps_double_dash_before_ps_options_is_dropped(monkeypatch, tmp_path):
    seen = {}
    import capsa.runtime.commands.ps as ps
    monkeypatch.setattr(ps, "run", lambda ctx, opts, args: seen.setdefault("args", args) and 0)
    cli.main(["--root", str(tmp_path), "ps", "ctr", "--", "-o", "pid"])
    assert seen["args"] == ["ctr", "-o", "pid"]
