"""What a benchmark is and what it reports: the contract between benchmarks and the runner.

A benchmark is a plain function ``fn(ctx: RunContext) -> Measurement``. It reads the prepared
input (``ctx.workload``), writes its results to ``ctx.output_topic`` (created by the runner,
empty), and measures itself. The runner then reads the output back, verifies it against the
expected results of the workload kind, and builds the :class:`Result` that lands in the JSON file.

Register a benchmark with :func:`register`; ``python -m bench.run`` runs every registered one
(or those named with ``--only``). Adding raystream's own runs::

    @register("raystream.w1.eos.4w", kind="w1", guarantee="exactly_once", system="raystream",
              workers=4)
    def raystream_w1_eos_4(ctx: RunContext) -> Measurement: ...

Kinds ``w3`` (latency at a fixed input rate) and ``w4`` (recovery after a SIGKILL) make their
own input and check their own output while they run: they return a :class:`Verification` in
``Measurement.verification``, which the runner takes as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from bench.workload import Workload

#: What a benchmark computes, which decides how its output is verified.
#: ``raw``: consume and count (no output topic); ``w1``: per-customer 10 s tumbling count and sum;
#: ``w2``: every payment enriched with its customer profile; ``w3``: W1 + W2 at a fixed input
#: rate, end-to-end latency; ``w4``: recovery of a worker holding many keys of window state.
Kind = Literal["raw", "w1", "w2", "w3", "w4"]

#: The processing guarantee; ``none`` for runs that produce nothing (raw consume).
Guarantee = Literal["none", "at_least_once", "exactly_once"]


@dataclass(frozen=True)
class RunContext:
    """Everything a benchmark function gets: where the broker is and what to read and write."""

    bootstrap: str
    workload: Workload
    #: The topic to write results to (created empty by the runner with ``workload.partitions``).
    output_topic: str
    #: A consumer group id and a transactional id no other run uses.
    group_id: str
    transactional_id: str
    guarantee: Guarantee
    #: Commit interval (ALOS: flush + offset commit; EOS: transaction length).
    commit_interval_ms: int = 200
    #: Run settings from the command line that some kinds read (``w3``: ``rate``,
    #: ``duration_s``; ``w4``: ``keys``).
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Measurement:
    """What a benchmark function measured itself (times from ``time.perf_counter``).

    ``duration_s`` runs from the first input record consumed to the last output committed (for
    raw consume: the last record consumed). ``startup_s`` is everything before the first record:
    clients, ``init_transactions``, loading a table. ``peak_rss_mib`` is filled by the runner
    (the benchmark process's peak RSS) unless the function sets it, e.g. summed over Ray
    workers.
    """

    records_in: int
    records_out: int
    startup_s: float
    duration_s: float
    peak_rss_mib: float | None = None
    #: Free-form numbers worth keeping (commits, transactions, late records, table load time).
    extra: dict[str, Any] = field(default_factory=dict)
    #: Set by benchmarks that check their own output (kinds ``w3`` and ``w4``).
    verification: Verification | None = None


@dataclass(frozen=True)
class Verification:
    """The outcome of reading a benchmark's output back and comparing it with the expectation."""

    ok: bool
    expected: int
    read: int
    missing: int = 0
    duplicates: int = 0
    unexpected: int = 0
    mismatched: int = 0
    #: A few offending records or a sentence on what went wrong.
    details: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Result:
    """One benchmark run, as written to the results file."""

    name: str
    system: str
    kind: Kind
    guarantee: Guarantee
    workers: int
    records_in: int
    records_out: int
    startup_s: float
    duration_s: float
    #: Input records per second over ``duration_s``.
    events_per_s: float
    peak_rss_mib: float | None
    verification: Verification
    extra: dict[str, Any]
    #: Which repetition this is (0-based) when the runner repeats benchmarks.
    repeat: int = 0
    #: Set when the function raised: the run failed and its numbers are zero.
    error: str | None = None


BenchFn = Callable[[RunContext], Measurement]


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark: its function and how to run and verify it."""

    name: str
    fn: BenchFn
    kind: Kind
    guarantee: Guarantee
    system: str = "baseline"
    workers: int = 1
    #: Run in a fresh (spawned) process, so peak RSS and imports are the run's own. Functions
    #: must then be importable module-level functions.
    isolate: bool = True
    #: After the run, check that ``ctx.group_id`` committed the input's end offsets.
    check_offsets: bool = True


BENCHMARKS: dict[str, Benchmark] = {}


def register(
    name: str,
    *,
    kind: Kind,
    guarantee: Guarantee,
    system: str = "baseline",
    workers: int = 1,
    isolate: bool = True,
    check_offsets: bool = True,
) -> Callable[[BenchFn], BenchFn]:
    """Decorator: register ``fn`` as benchmark ``name`` (names are unique)."""

    def deco(fn: BenchFn) -> BenchFn:
        if name in BENCHMARKS:
            raise ValueError(f"benchmark {name!r} is registered twice")
        BENCHMARKS[name] = Benchmark(
            name, fn, kind, guarantee, system, workers, isolate, check_offsets
        )
        return fn

    return deco
