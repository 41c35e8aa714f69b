"""``raystream dev up|status|down|env``: the local development stack (broker + Ray head).

Exit codes: 0 success; 1 error; ``dev status`` returns 3 when the stack is not (fully) up.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from raystream.dev.stack import (
    DevState,
    DevStatus,
    dev_down,
    dev_environment,
    dev_status,
    dev_up,
    read_state,
    uptime_seconds,
)
from raystream.errors import DevStackError

#: ``dev status`` exit code when the stack is not fully up (as LSB's "program is not running").
EXIT_NOT_RUNNING = 3


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``dev`` group and its actions."""
    group = subparsers.add_parser(
        "dev",
        parents=[common],
        help="run a local broker and Ray head for development",
        description="A local Kafka-compatible broker (Tansu, memory only) and a Ray head with "
        "its dashboard, started in the background and recorded in <home>/dev.json.",
    )
    group.set_defaults(group_parser=group)
    actions = group.add_subparsers(title="actions", metavar="ACTION")

    up = actions.add_parser("up", parents=[common], help="start the stack (idempotent)")
    up.add_argument("--num-cpus", type=_positive_int, help="CPUs Ray may use (default: all)")
    up.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for readiness (default 60)"
    )
    up.set_defaults(handler=_up)

    status = actions.add_parser(
        "status", parents=[common], help="show whether each part runs and answers"
    )
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(handler=_status)

    down = actions.add_parser("down", parents=[common], help="stop the stack")
    down.add_argument(
        "--keep-logs", action="store_true", help="keep Ray's temp dir (its logs) after stopping"
    )
    down.set_defaults(handler=_down)

    env = actions.add_parser(
        "env", parents=[common], help='print export lines: eval "$(raystream dev env)"'
    )
    env.set_defaults(handler=_env)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _note(message: str) -> None:
    print(message, file=sys.stderr)


def export_line(environment: dict[str, str]) -> str:
    """A shell ``export`` line for ``environment``, quoted for sh/bash/zsh."""
    return "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in environment.items())


def describe(state: DevState) -> str:
    """The addresses of a running stack, as ``dev up`` prints them."""
    return "\n".join(
        [
            f"  broker     {state.broker_bootstrap}   (pid {state.broker_pid}, "
            f"log {state.broker_log})",
            f"  ray        {state.ray_address}   (pid {state.ray.launcher_pid}, "
            f"log {state.ray_log}, Ray logs {state.ray.temp_dir})",
            f"  dashboard  {state.dashboard_url}",
            "",
            export_line(state.environment()),
        ]
    )


def _up(args: argparse.Namespace) -> int:
    state = dev_up(args.home, num_cpus=args.num_cpus, timeout=args.timeout, notify=_note)
    print(f"raystream dev stack is up (home {args.home})")
    print(describe(state))
    return 0


def _status(args: argparse.Namespace) -> int:
    status = dev_status(args.home)
    if args.json:
        print(json.dumps(status.to_dict(), indent=2))
    else:
        print(_status_text(status))
    return 0 if status.up else EXIT_NOT_RUNNING


def _status_text(status: DevStatus) -> str:
    state = status.state
    if state is None:
        return "raystream dev stack: not running (run `raystream dev up`)"

    def mark(ok: bool) -> str:
        return "ok  " if ok else "DOWN"

    lines = [
        f"raystream dev stack: {'up' if status.up else 'DEGRADED'} "
        f"(started {state.started_at}, up {uptime_seconds(state):.0f} s)",
        f"  [{mark(status.broker_process and status.broker_answers)}] broker     "
        f"{state.broker_bootstrap} (pid {state.broker_pid})",
        f"  [{mark(status.ray_process and status.ray_healthy)}] ray        "
        f"{state.ray_address} (pid {state.ray.launcher_pid})",
        f"  [{mark(status.dashboard_answers)}] dashboard  {state.dashboard_url}",
    ]
    lines += [f"  - {problem}" for problem in status.problems()]
    if not status.up:
        lines.append("run `raystream dev up` to restart it, or `raystream dev down` to clean up")
    return "\n".join(lines)


def _down(args: argparse.Namespace) -> int:
    state = dev_down(args.home, keep_logs=args.keep_logs)
    if state is None:
        print("raystream dev stack: nothing to stop")
    else:
        kept = f"; Ray logs kept in {state.ray.temp_dir}" if args.keep_logs else ""
        print(
            f"raystream dev stack stopped (broker pid {state.broker_pid}, "
            f"Ray launcher pid {state.ray.launcher_pid}){kept}"
        )
    return 0


def _env(args: argparse.Namespace) -> int:
    environment = dev_environment(args.home)
    if environment is None:
        recorded = read_state(args.home) is not None
        hint = "it is not running" if recorded else "none is recorded"
        raise DevStackError(f"no dev stack to export ({hint}): run `raystream dev up`")
    print(export_line(environment))
    return 0
