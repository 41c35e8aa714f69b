"""`raystream generate`: the parser, how many records a duration means, and the progress bar."""

from __future__ import annotations

import argparse
import io

import pytest

from raystream.cli import generate
from raystream.cli.main import build_parser


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["generate", *argv])


def test_payments_and_orders_are_sub_commands_with_their_options() -> None:
    args = parse("payments", "--count", "500", "--seed", "3", "--truth", "t.jsonl", "--clean")
    assert args.handler is generate._payments
    assert (args.count, args.seed, args.clean, str(args.truth)) == (500, 3, True, "t.jsonl")
    args = parse("orders", "--duration", "2.5", "--rate", "100", "--decline-rate", "0.2")
    assert args.handler is generate._orders
    assert (args.duration, args.rate, args.decline_rate) == (2.5, 100.0, 0.2)


def test_count_and_duration_exclude_each_other_and_rates_are_probabilities(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse("payments", "--count", "5", "--duration", "1")
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("orders", "--decline-rate", "1.5")
    assert "probability" in capsys.readouterr().err


def test_a_duration_means_rate_times_seconds_or_a_ceiling_when_unpaced() -> None:
    assert generate._count(parse("orders", "--count", "7"), 1, 99) == 7
    assert generate._count(parse("orders"), 1_000, 99) == 1_000
    assert generate._count(parse("orders", "--duration", "10", "--rate", "50"), 1, 99) == 501
    assert generate._count(parse("orders", "--duration", "10"), 1, 99) == 99


def test_progress_bar_fills_towards_the_count_or_the_duration() -> None:
    out = io.StringIO()
    generate.ProgressBar(total=100, seconds=None, out=out, width=10)(50, 2.0)
    assert out.getvalue() == "\r  [#####.....] 50 records, 2.0s, 25/s "
    out = io.StringIO()
    bar = generate.ProgressBar(total=None, seconds=4.0, out=out, width=10)
    bar(1_000, 1.0)
    bar.close()
    assert out.getvalue() == "\r  [##........] 1,000 records, 1.0s, 1,000/s \n"
