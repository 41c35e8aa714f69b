"""Run by test_node_loss in a fresh process (it needs its own multi-node Ray, which a process can
join only once): a 4-node Ray cluster on this machine, the exactly-once job on 4 workers, one
worker node removed mid-run; exits 0 when the committed results are exact.

    python -m tests.integration.node_loss_run <bootstrap> <unique> <tmp dir>
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import ray
from ray.cluster_utils import Cluster

from raystream.dev.broker import EmbeddedBroker

from .test_exactly_once import check, new_app, prepare


class _Broker:
    """The session broker of the calling test, by address."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap


def main(bootstrap: str, unique: str, tmp: str) -> int:
    broker: Any = _Broker(bootstrap)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False},
    )
    try:
        # Workers take 1 CPU: 4 of them on three 2-CPU nodes leave room for the ones that move.
        nodes = [cluster.add_node(num_cpus=2) for _ in range(3)]
        assert cluster.head_node is not None
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="raystream", log_to_driver=False)
        rows = prepare(broker, unique, 1_000_000, seed=4)
        app = new_app(broker, unique, Path(tmp))
        app.config = app.config.with_(worker_num_cpus=1.0)
        running = app.start(workers=4, bounded=True)
        deadline = time.monotonic() + 60
        while True:  # until every worker is processing
            status = running.status()
            states = [w["state"] for w in status["workers"].values()]
            if len(states) == 4 and all(s == "running" for s in states):
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        assert running.wait(timeout=0) == "running", "the run ended before the node left"
        status = running.status()
        on_node = {w["node_id"] for w in status["workers"].values()}
        # Every node of this cluster is on 127.0.0.1, so the driver may have attached to any of
        # them; the coordinator sits next to the driver. Remove another node hosting workers.
        keep = {ray.get_runtime_context().get_node_id(), status["coordinator_node"]}
        victim = next(n for n in [cluster.head_node, *nodes] if n.node_id in on_node - keep)
        moved = [s for s, w in status["workers"].items() if w["node_id"] == victim.node_id]
        print(f"removing node {victim.node_id[:8]} hosting workers {moved}", flush=True)
        cluster.remove_node(victim, allow_graceful=False)
        state = running.wait(timeout=600)
        after = running.status()
        result = running.stop()
        assert state == "finished", after
        for slot in moved:  # restarted on a surviving node, and finished its tasks there
            w = after["workers"][slot]
            assert w["node_id"] != victim.node_id and w["state"] == "finished", after
        assert status["coordinator_node"] != victim.node_id
        check(app, broker, unique, rows)
        print(f"exact after losing a node; {result.records_in} records in", flush=True)
        return 0
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    _ = EmbeddedBroker  # the broker belongs to the calling test
    sys.exit(main(*sys.argv[1:4]))
