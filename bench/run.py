"""The benchmark command: start a broker, prepare the input, run, verify, write the results.

    python -m bench.run                               # everything: 1M records, W3 60 s, W4 1M keys
    python -m bench.run --quick                       # 100k records, W3 15 s, W4 100k keys
    python -m bench.run --only 'baseline.w1.*' 'raystream.w1.*' --repeat 3
    python -m bench.run --list

Every run writes to a fresh output topic and is verified by reading it back; a run whose output
is wrong is reported as failed (exit status 1), however fast it was.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import importlib
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import confluent_kafka
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from bench.cpu import CpuSampler
from bench.registry import BENCHMARKS, Benchmark, Measurement, Result, RunContext, Verification
from bench.verify import offsets_problems, verify_w1, verify_w2
from bench.w3 import W3_LINGER_MS
from bench.workload import Expected, Workload, WorkloadSpec, prepare
from raystream._kafka.admin import Topics
from raystream.config import KafkaConfig
from raystream.dev.broker import EmbeddedBroker

#: Modules whose import registers benchmarks (add more with ``--module``).
MODULES = ("bench.baseline", "bench.baseline_w3", "bench.raystream_runs")
#: A single run taking longer than this is stopped and reported as failed.
RUN_TIMEOUT_S = 900.0


def peak_rss_mib() -> float:
    """Peak resident set size of this process, MiB.

    Linux's ``VmHWM`` where there is one. ``getrusage().ru_maxrss`` is the fallback only: in a
    spawned child it also counts the parent's RSS at fork time (Linux carries the pre-``exec``
    peak over), so it would grow with whatever the runner holds.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _measure(bench: Benchmark, ctx: RunContext) -> Measurement:
    m = bench.fn(ctx)
    if m.peak_rss_mib is None:
        m.peak_rss_mib = peak_rss_mib()
    return m


def _child(conn: Connection, bench: Benchmark, ctx: RunContext) -> None:
    try:
        conn.send(("ok", _measure(bench, ctx)))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def measure_isolated(
    bench: Benchmark, ctx: RunContext, timeout: float = RUN_TIMEOUT_S
) -> Measurement:
    """Run ``bench`` in a freshly spawned process; return its measurement or raise."""
    mp = multiprocessing.get_context("spawn")
    parent, child = mp.Pipe(duplex=False)
    proc = mp.Process(target=_child, args=(child, bench, ctx), name=f"bench:{bench.name}")
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            raise TimeoutError(f"{bench.name} did not finish in {timeout}s")
        status, payload = parent.recv()
    except EOFError:
        raise RuntimeError(f"{bench.name}: the benchmark process died") from None
    finally:
        parent.close()
        proc.join(10)
        if proc.is_alive():
            proc.kill()  # our own child, by its pid
            proc.join(5)
    if status != "ok":
        raise RuntimeError(f"{bench.name} failed:\n{payload}")
    assert isinstance(payload, Measurement)
    return payload


def verify(
    bench: Benchmark, ctx: RunContext, m: Measurement, workload: Workload, exp: Expected
) -> Verification:
    """Read the run's output back and compare it with ``exp``; also check committed offsets.
    Benchmarks that check their own output (W3, W4) hand in their verification."""
    if m.verification is not None:
        return m.verification
    n = workload.spec.records
    if bench.kind == "raw":
        ok = m.records_in == n
        details = [] if ok else [f"consumed {m.records_in} records, expected {n}"]
        return Verification(ok, n, m.records_in, max(n - m.records_in, 0), details=details)
    isolation = "read_committed" if bench.guarantee == "exactly_once" else "read_uncommitted"
    check = verify_w1 if bench.kind == "w1" else verify_w2
    v = check(ctx.bootstrap, ctx.output_topic, exp, isolation)
    problems: list[str] = []
    if v.read != m.records_out:
        problems.append(f"the run reported {m.records_out} outputs, {v.read} were read back")
    if m.extra.get("aborted_transactions"):
        problems.append(
            f"{m.extra['aborted_transactions']} aborted transactions: their records are visible "
            "on the embedded broker (BROKER.md quirk 2)"
        )
    if bench.check_offsets:
        problems += offsets_problems(ctx.bootstrap, ctx.group_id, workload)
    ok = v.ok and not problems
    return dataclasses.replace(v, ok=ok, details=[*v.details, *problems])


def run_one(
    bench: Benchmark,
    bootstrap: str,
    workload: Workload,
    exp: Expected,
    repeat: int,
    params: dict[str, Any] | None = None,
) -> Result:
    """Create a fresh output topic, run ``bench`` on it, verify, and build its Result."""
    tag = f"{bench.name}.{repeat}"
    ctx = RunContext(
        bootstrap=bootstrap,
        workload=workload,
        output_topic=f"bench.out.{tag}",
        group_id=f"bench-{tag}",
        transactional_id=f"bench-{tag}",
        guarantee=bench.guarantee,
        params=dict(params or {}),
    )
    topics = Topics(KafkaConfig(brokers=bootstrap))
    before = set(topics.partitions())
    if bench.kind != "raw":
        topics.ensure({ctx.output_topic: workload.partitions})
    load = os.getloadavg()[0]
    try:
        with CpuSampler(ctx.params.get("broker_pid")) as cpu:
            m = measure_isolated(bench, ctx) if bench.isolate else _measure(bench, ctx)
        span = m.extra.get("span_wall")
        if span:
            m.extra["cpu"] = cpu.span(span[0], span[1], m.records_in)
        t0 = time.perf_counter()
        v = verify(bench, ctx, m, workload, exp)
        m.extra["verify_s"] = round(time.perf_counter() - t0, 2)
        error = None
    except Exception as exc:
        m = Measurement(0, 0, 0.0, 0.0)
        v = Verification(False, 0, 0, details=[str(exc)])
        error = str(exc)
    finally:
        drop_topics(bootstrap, set(topics.partitions()) - before)
    return Result(
        name=bench.name,
        system=bench.system,
        kind=bench.kind,
        guarantee=bench.guarantee,
        workers=bench.workers,
        records_in=m.records_in,
        records_out=m.records_out,
        startup_s=round(m.startup_s, 3),
        duration_s=round(m.duration_s, 3),
        events_per_s=round(m.records_in / m.duration_s) if m.duration_s > 0 else 0,
        peak_rss_mib=round(m.peak_rss_mib, 1) if m.peak_rss_mib is not None else None,
        verification=v,
        extra={**m.extra, "loadavg_1m_before": round(load, 2)},
        repeat=repeat,
        error=error,
    )


def drop_topics(bootstrap: str, names: set[str]) -> None:
    """Delete a finished run's topics (its output, the app's own): the embedded broker's cost
    per request grows with what it holds, so each run should find it as the first one did."""
    if not names:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for name, fut in admin.delete_topics(sorted(names), operation_timeout=30).items():
        try:
            fut.result()
        except KafkaException as exc:
            print(f"    could not delete topic {name}: {exc}", flush=True)


def run_on_fresh_broker(
    bench: Benchmark, spec: WorkloadSpec, repeat: int, params: dict[str, Any]
) -> Result:
    """``run_one`` on an embedded broker of its own, holding only the customers table: the
    embedded broker's cost per request grows with what it holds (every fetch lists a
    partition's stored batches; every produce and transaction rewrites a record of all its
    producers), so a latency run after the throughput runs measured that history too."""
    fresh = EmbeddedBroker().start()
    try:
        small = dataclasses.replace(spec, records=spec.partitions)
        workload, exp, _ = prepare(fresh.bootstrap, small)
        res = run_one(
            bench, fresh.bootstrap, workload, exp, repeat, {**params, "broker_pid": fresh.pid}
        )
    finally:
        fresh.stop()
    res.extra["fresh_broker"] = True
    return res


def table(results: Sequence[Result]) -> str:
    """The results as a plain-text table."""
    head = (
        "benchmark",
        "guarantee",
        "workers",
        "in",
        "out",
        "startup s",
        "run s",
        "events/s",
        "RSS MiB",
        "ok",
    )
    rows = [
        (
            r.name + (f" #{r.repeat}" if r.repeat else ""),
            r.guarantee,
            str(r.workers),
            f"{r.records_in:,}",
            f"{r.records_out:,}",
            f"{r.startup_s:.2f}",
            f"{r.duration_s:.2f}",
            f"{r.events_per_s:,.0f}",
            f"{r.peak_rss_mib:.0f}" if r.peak_rss_mib is not None else "-",
            "yes" if r.verification.ok else "NO",
        )
        for r in results
    ]
    return render(head, rows, left=2)


def render(head: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    """A plain-text table; the first ``left`` columns are left-aligned."""
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows, strict=True)]
    lines = [
        "  ".join(
            str(c).rjust(w) if i >= left else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in (head, *rows)
    ]
    return "\n".join(lines)


def _fmt(v: Any, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def comparison(results: Sequence[Result]) -> list[dict[str, Any]]:
    """Every W1/W2 run of another system against the baseline measured in the same invocation:
    events/s over the baseline's median for the same workload and guarantee, and over the
    median raw consume rate."""
    good = [r for r in results if r.verification.ok and r.events_per_s > 0]

    def median(rs: list[Result]) -> float | None:
        return statistics.median(r.events_per_s for r in rs) if rs else None

    raw = median([r for r in good if r.name == "baseline.raw"])
    rows = []
    for r in results:
        if r.system == "baseline" or r.kind not in ("w1", "w2"):
            continue
        base = median(
            [
                r2
                for r2 in good
                if r2.system == "baseline" and (r2.kind, r2.guarantee) == (r.kind, r.guarantee)
            ]
        )
        ok = r.verification.ok and r.events_per_s > 0
        rows.append(
            {
                "name": r.name,
                "repeat": r.repeat,
                "workers": r.workers,
                "events_per_s": r.events_per_s,
                "baseline_events_per_s": base and round(base),
                "vs_baseline": round(r.events_per_s / base, 3) if ok and base else None,
                "vs_raw": round(r.events_per_s / raw, 4) if ok and raw else None,
                "startup_s": r.startup_s,
                "peak_rss_mib": r.peak_rss_mib,
                "ok": r.verification.ok,
            }
        )
    return rows


def comparison_table(rows: Sequence[dict[str, Any]]) -> str:
    """:func:`comparison` as text."""
    head = ("run", "events/s", "baseline", "x baseline", "x raw", "startup s", "RSS/worker", "ok")
    return render(
        head,
        [
            (
                r["name"] + (f" #{r['repeat']}" if r["repeat"] else ""),
                _fmt(r["events_per_s"]),
                _fmt(r["baseline_events_per_s"]),
                _fmt(r["vs_baseline"], ".2f"),
                _fmt(r["vs_raw"], ".3f"),
                _fmt(r["startup_s"], ".1f"),
                _fmt(r["peak_rss_mib"]),
                "yes" if r["ok"] else "NO",
            )
            for r in rows
        ],
    )


def cpu_table(results: Sequence[Result]) -> str:
    """Throughput runs: the cores the machine and the broker kept busy from the first record to
    the last commit, and the CPU that cost per input record."""
    rows = []
    for r in results:
        cpu = r.extra.get("cpu")
        if not cpu:
            continue
        rows.append(
            (
                r.name + (f" #{r.repeat}" if r.repeat else ""),
                _fmt(r.events_per_s),
                _fmt(cpu.get("cores_machine"), ".2f"),
                _fmt(cpu.get("cores_broker"), ".2f"),
                _fmt(cpu.get("us_per_record_machine"), ".1f"),
                _fmt(cpu.get("us_per_record_broker"), ".1f"),
            )
        )
    if not rows:
        return ""
    head = ("run", "events/s", "cores", "broker cores", "us/rec", "broker us/rec")
    return render(head, rows)


def latency_table(results: Sequence[Result]) -> str:
    """W3 runs: achieved input rate and end-to-end latency of W2 and W1 results."""
    rows = []
    for r in results:
        if r.kind != "w3":
            continue
        w2, w1 = r.extra.get("latency_w2_ms", {}), r.extra.get("latency_w1_ms", {})
        cpu = r.extra.get("cpu_percent_of_one_core", {})
        workers = [v for k, v in cpu.items() if k.startswith("worker")]
        rows.append(
            (
                r.name + (f" #{r.repeat}" if r.repeat else ""),
                _fmt(r.events_per_s),
                str(r.extra.get("commit_interval_ms", "-")),
                *(_fmt(w2.get(k), ",.0f") for k in ("p50", "p99", "max")),
                *(_fmt(w1.get(k), ",.0f") for k in ("p50", "p99", "max")),
                _fmt(cpu.get("broker"), ".0f"),
                _fmt(max(workers) if workers else None, ".0f"),
                f"{r.extra.get('loadavg_1m_before', 0):.2f}",
                "yes" if r.verification.ok else "NO",
            )
        )
    head = (
        "W3 run", "in/s", "commit ms", "W2 p50", "W2 p99", "W2 max",
        "W1 p50", "W1 p99", "W1 max", "broker %", "worker %", "load", "ok",
    )  # fmt: skip
    return render(head, rows) if rows else ""


def recovery_table(results: Sequence[Result]) -> str:
    """W4 runs: startup, state memory, checkpoint size and the recovery after a SIGKILL."""
    rows = []
    for r in results:
        if r.kind != "w4":
            continue
        e = r.extra
        rows.append(
            (
                r.name + (f" #{r.repeat}" if r.repeat else ""),
                _fmt(e.get("keys")),
                _fmt(e.get("start_to_first_record_s"), ".2f"),
                _fmt(e.get("state_rss_mib")),
                _fmt((e.get("checkpoint_bytes_after_ingest") or 0) / 2**20),
                _fmt(e.get("recovery_s"), ".2f"),
                _fmt(e.get("kill_to_reassigned_s"), ".2f"),
                _fmt(e.get("reassigned_to_resumed_s"), ".2f"),
                _fmt(e.get("restore_s"), ".2f"),
                _fmt(e.get("full_epoch_write_s"), ".2f"),
                "yes" if r.verification.ok else "NO",
            )
        )
    head = (
        "W4 run", "keys", "start->1st s", "state MiB", "ckpt MiB", "recovery s",
        "kill->restart", "restart->resumed", "restore s", "full write s", "ok",
    )  # fmt: skip
    return render(head, rows) if rows else ""


def summary(results: Sequence[Result]) -> dict[str, dict[str, Any]]:
    """Per benchmark over its repetitions: median, min and max events/s, and whether all passed."""
    names = dict.fromkeys(r.name for r in results)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        runs = [r for r in results if r.name == name]
        rates = [r.events_per_s for r in runs if r.verification.ok]
        out[name] = {
            "runs": len(runs),
            "all_ok": len(rates) == len(runs),
            "median_events_per_s": round(statistics.median(rates)) if rates else 0,
            "min_events_per_s": min(rates, default=0),
            "max_events_per_s": max(rates, default=0),
            "median_startup_s": round(statistics.median(r.startup_s for r in runs), 3),
        }
    return out


def select(patterns: Sequence[str] | None) -> list[Benchmark]:
    """The registered benchmarks matching any of ``patterns`` (globs), in registration order."""
    if not patterns:
        return list(BENCHMARKS.values())
    chosen = [b for b in BENCHMARKS.values() if any(fnmatch.fnmatch(b.name, p) for p in patterns)]
    if not chosen:
        raise SystemExit(f"no benchmark matches {list(patterns)}; try --list")
    return chosen


def _meta(
    spec: WorkloadSpec, prep: dict[str, float], bootstrap: str, embedded: bool
) -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "workload": dataclasses.asdict(spec),
        "prepare": {k: round(v, 2) for k, v in prep.items()},
        "broker": "embedded Tansu" if embedded else bootstrap,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "confluent_kafka": confluent_kafka.version(),
        "librdkafka": confluent_kafka.libversion()[0],
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "git": _git_state(),
    }


def _git_state() -> dict[str, Any]:
    """The commit of this checkout, which raystream was measured (this checkout's, or another
    copy found first on PYTHONPATH), and how many of its files differ from the commit."""
    import subprocess

    import raystream

    repo = Path(__file__).resolve().parent.parent
    measured = Path(raystream.__file__).resolve().parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(repo), *args],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout.strip()
        except OSError:
            return ""

    in_repo = measured == repo / "raystream"
    changed = git("status", "--porcelain", "--", "raystream").splitlines() if in_repo else None
    return {
        "commit": git("rev-parse", "HEAD"),
        "raystream_measured": str(measured),
        "raystream_uncommitted_files": None if changed is None else len(changed),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the benchmarks, write and print the results."""
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000, help="payments (default 1,000,000)")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="shorter: 100,000 records, W3 for 15 s, W4 with 100,000 keys",
    )
    ap.add_argument("--duration", type=float, help="W3 seconds of input (default 60; quick 15)")
    ap.add_argument("--rate", type=int, default=20_000, help="W3 input events/s (default 20,000)")
    ap.add_argument(
        "--w3-linger-ms",
        type=int,
        default=W3_LINGER_MS,
        help="W3 input producer's linger.ms, counted in the latency (default 50: with 5, the "
        "embedded broker stores ~200 batches a second per partition and every fetch lists "
        "them all; see bench/README.md)",
    )
    ap.add_argument(
        "--output-linger-ms",
        type=int,
        help="linger.ms of raystream's producers (default: raystream's own)",
    )
    ap.add_argument(
        "--no-overlap-commits",
        action="store_true",
        help="raystream waits for every exactly-once commit (RuntimeConfig.overlap_commits off)",
    )
    ap.add_argument("--w4-keys", type=int, help="W4 keys of window state (default 1M; quick 100k)")
    ap.add_argument("--only", nargs="+", metavar="GLOB", help="run only these benchmarks")
    ap.add_argument("--repeat", type=int, default=1, help="run each benchmark this many times")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--bootstrap", help="use this broker (fresh, no input topics) instead")
    ap.add_argument("--module", action="append", default=[], help="import to register more")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = ap.parse_args(argv)
    for mod in (*MODULES, *args.module):
        importlib.import_module(mod)
    chosen = select(args.only)
    if args.list:
        for b in chosen:
            print(f"{b.name:28} {b.system:10} {b.kind:4} {b.guarantee:14} workers={b.workers}")
        return 0
    spec = WorkloadSpec(records=100_000 if args.quick else args.records)
    params = {
        "rate": args.rate,
        "linger_ms": args.w3_linger_ms,
        "output_linger_ms": args.output_linger_ms,
        "overlap_commits": not args.no_overlap_commits,
        "duration_s": args.duration or (15.0 if args.quick else 60.0),
        "keys": args.w4_keys or (100_000 if args.quick else 1_000_000),
    }

    broker = None if args.bootstrap else EmbeddedBroker().start()
    if broker is not None:
        params["broker_pid"] = broker.pid  # W3 reports the CPU each process took
    try:
        bootstrap = args.bootstrap or broker.bootstrap  # type: ignore[union-attr]
        print(f"broker {bootstrap}: preparing {spec.records:,} payments...", flush=True)
        workload, exp, prep = prepare(bootstrap, spec)
        print(f"prepared in {prep['prepare_s']:.1f}s", flush=True)
        results: list[Result] = []
        # Round robin: with repeats, every benchmark meets the broker and the machine in
        # every state the run goes through, not one benchmark the early ones.
        for r in range(args.repeat):
            for bench in chosen:
                if bench.kind == "w3" and broker is not None:
                    res = run_on_fresh_broker(bench, spec, r, params)
                else:
                    res = run_one(bench, bootstrap, workload, exp, r, params)
                results.append(res)
                print(table([res]).splitlines()[1], flush=True)
                for line in res.verification.details[:5]:
                    print(f"    {line}", flush=True)
        meta = {**_meta(spec, prep, bootstrap, broker is not None), "params": params}
    finally:
        if broker is not None:
            broker.stop()
    print()
    print(table(results))
    comp = comparison(results)
    for text in (comparison_table(comp) if comp else "", cpu_table(results),
                 latency_table(results), recovery_table(results)):  # fmt: skip
        if text:
            print()
            print(text)
    summ = summary(results)
    if args.repeat > 1:
        print()
        for name, s in summ.items():
            print(
                f"{name:28} median {s['median_events_per_s']:>10,} events/s "
                f"(min {s['min_events_per_s']:,}, max {s['max_events_per_s']:,}, "
                f"{s['runs']} runs{'' if s['all_ok'] else ', SOME FAILED'})"
            )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "meta": meta,
            "summary": summ,
            "comparison": comp,
            "results": [dataclasses.asdict(r) for r in results],
        }
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0 if all(r.verification.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
