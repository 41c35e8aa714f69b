"""The ``raystream`` command line: parsing, home resolution, error reporting, dev state files.

No processes are started here: the ``dev`` commands run against empty or hand-written homes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raystream.cli import dev as dev_cli
from raystream.cli.main import GROUPS, build_parser, main, resolve_home
from raystream.dev.ray_head import (
    MAX_TEMP_DIR_LEN,
    RayHeadInfo,
    default_temp_dir,
    process_start_ticks,
    ray_client_env,
    same_process,
)
from raystream.dev.stack import DevState, dev_addresses, dev_environment, read_state

RAY_INFO = RayHeadInfo(
    gcs_address="127.0.0.1:6390",
    dashboard_url="http://127.0.0.1:8300",
    launcher_pid=4242,
    launcher_start_ticks=99,
    temp_dir="/tmp/raystream-0-6390",
    token="abc",
    agent_url="http://127.0.0.1:52000",
)
STATE = DevState(
    broker_bootstrap="127.0.0.1:9092",
    broker_pid=4241,
    broker_start_ticks=98,
    broker_log="/h/broker.log",
    ray=RAY_INFO,
    ray_log="/h/ray-head.log",
    auth_token_path="/h/ray-auth-token",
    started_at="2026-01-01T00:00:00+00:00",
)


@pytest.mark.parametrize(
    ("argv", "handler", "extra"),
    [
        (["dev", "up"], "_up", {"num_cpus": None, "timeout": 60.0}),
        (["dev", "up", "--num-cpus", "2", "--timeout", "5"], "_up", {"num_cpus": 2, "timeout": 5}),
        (["dev", "status"], "_status", {"json": False}),
        (["dev", "status", "--json"], "_status", {"json": True}),
        (["dev", "down"], "_down", {"keep_logs": False}),
        (["dev", "down", "--keep-logs"], "_down", {"keep_logs": True}),
        (["dev", "env"], "_env", {}),
    ],
)
def test_dev_actions_parse_to_their_handlers(
    argv: list[str], handler: str, extra: dict[str, object]
) -> None:
    args = build_parser().parse_args(argv)
    assert args.handler is getattr(dev_cli, handler)
    for name, value in extra.items():
        assert getattr(args, name) == value


@pytest.mark.parametrize(
    "argv",
    [
        ["--debug", "--home", "/x", "dev", "status"],
        ["dev", "--debug", "--home", "/x", "status"],
        ["dev", "status", "--debug", "--home", "/x"],
    ],
)
def test_common_options_are_accepted_at_every_level(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert args.debug is True
    assert args.home == Path("/x")


@pytest.mark.parametrize(
    "argv",
    [
        ["dev", "up", "--num-cpus", "0"],
        ["dev", "up", "--num-cpus", "two"],
        ["dev", "restart"],
        ["nope"],
    ],
)
def test_bad_arguments_exit_with_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc_info:
        build_parser().parse_args(argv)
    assert exc_info.value.code == 2
    assert "usage: raystream" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "usage"), [([], "raystream [-h]"), (["dev"], "raystream dev")])
def test_missing_command_prints_help_and_returns_2(
    argv: list[str], usage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert f"usage: {usage}" in capsys.readouterr().err


def test_every_group_registers_a_command() -> None:
    parser = build_parser()
    help_text = parser.format_help()
    assert len(GROUPS) >= 1
    for group in GROUPS:
        name = group.__name__.rsplit(".", 1)[-1]  # type: ignore[attr-defined]
        assert f"    {name} " in help_text


def test_home_comes_from_flag_then_env_then_default(tmp_path: Path) -> None:
    assert resolve_home(tmp_path / "flag", {"RAYSTREAM_HOME": "/env"}) == tmp_path / "flag"
    assert resolve_home(None, {"RAYSTREAM_HOME": "/env"}) == Path("/env")
    assert resolve_home(None, {"RAYSTREAM_HOME": ""}) == Path.home() / ".raystream"
    assert resolve_home(None, {}) == Path.home() / ".raystream"
    assert resolve_home(Path("~/h"), {}) == Path.home() / "h"


def test_env_var_home_reaches_the_handler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAYSTREAM_HOME", str(tmp_path))
    (tmp_path / "dev.json").write_text(json.dumps(STATE.to_dict()))
    assert main(["dev", "status", "--json"]) == dev_cli.EXIT_NOT_RUNNING  # PIDs are not ours
    out = json.loads(capsys.readouterr().out)
    assert out["state"]["broker"]["bootstrap"] == "127.0.0.1:9092"


def test_status_of_an_empty_home(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--home", str(tmp_path), "dev", "status"]) == dev_cli.EXIT_NOT_RUNNING
    assert "not running" in capsys.readouterr().out
    assert main(["--home", str(tmp_path), "dev", "status", "--json"]) == dev_cli.EXIT_NOT_RUNNING
    out = json.loads(capsys.readouterr().out)
    assert out["up"] is False and out["state"] is None and out["problems"]


def test_down_with_nothing_up_is_not_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--home", str(tmp_path), "dev", "down"]) == 0
    assert "nothing to stop" in capsys.readouterr().out


def test_raystream_errors_print_one_line_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--home", str(tmp_path), "dev", "env"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no dev stack to export")
    assert "raystream dev up" in err
    assert "Traceback" not in err


def test_debug_adds_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--home", str(tmp_path), "--debug", "dev", "env"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "DevStackError" in err
    assert err.rstrip().splitlines()[-1].startswith("error: ")


def test_malformed_state_file_is_reported_with_a_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "dev.json").write_text('{"version": 1, "broker": {}}')
    assert main(["--home", str(tmp_path), "dev", "status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "delete the file" in err
    assert dev_addresses(tmp_path) is None  # the runtime's lookup never raises


def test_state_round_trips_through_json(tmp_path: Path) -> None:
    (tmp_path / "dev.json").write_text(json.dumps(STATE.to_dict()))
    assert read_state(tmp_path) == STATE
    assert RayHeadInfo.from_dict(RAY_INFO.to_dict()) == RAY_INFO


def test_dead_recorded_processes_are_not_reported_as_running(tmp_path: Path) -> None:
    (tmp_path / "dev.json").write_text(json.dumps(STATE.to_dict()))
    assert dev_addresses(tmp_path) is None
    assert dev_environment(tmp_path) is None


def test_environment_names_brokers_ray_and_auth() -> None:
    assert STATE.environment() == {
        "RAYSTREAM_BROKERS": "127.0.0.1:9092",
        "RAY_ADDRESS": "127.0.0.1:6390",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": "/h/ray-auth-token",
    }
    assert ray_client_env("a:1", None) == {
        "RAY_ADDRESS": "a:1",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "disabled",
    }


def test_export_line_quotes_for_the_shell() -> None:
    line = dev_cli.export_line({"A": "1.2.3.4:5", "B": "/path with space/x"})
    assert line == "export A=1.2.3.4:5 B='/path with space/x'"


def test_process_identity_uses_start_time() -> None:
    import os

    ticks = process_start_ticks(os.getpid())
    assert ticks is not None
    assert same_process(os.getpid(), ticks)
    assert not same_process(os.getpid(), ticks + 1)  # same PID, another process


def test_default_ray_temp_dir_is_short_enough() -> None:
    assert len(str(default_temp_dir(65535))) <= MAX_TEMP_DIR_LEN
