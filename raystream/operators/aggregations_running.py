"""The non-windowed running aggregate: a table with one row per key, updated as records arrive.

``stream.group_by(...).agg(...)`` without a window. Each micro-batch emits one row per key it
changed (``key_name`` then one column per aggregation), carrying the aggregates after the batch;
the row's timestamp is the largest event time seen for the key (as a Kafka Streams KTable
aggregate does). Null keys are dropped and counted in ``dropped_null_keys``. There is no lateness:
every record counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from raystream.errors import ConfigError
from raystream.operators.aggregations import Aggregation, normalize_aggs
from raystream.operators.aggregations_batch import group_ids
from raystream.operators.base import Batch, Operator, OperatorSpec
from raystream.operators.windows_common import KeyedAggregateBase, ResultRow


@dataclass(frozen=True)
class RunningAggregateSpec(OperatorSpec):
    """Spec of a non-windowed aggregate (a table keyed by the stream's key)."""

    aggs: tuple[tuple[str, Aggregation], ...]
    key_name: str = "key"
    kind = "aggregate"

    def __post_init__(self) -> None:
        if not isinstance(self.key_name, str) or not self.key_name:
            raise ConfigError(f"key_name must be a non-empty str, got {self.key_name!r}")
        object.__setattr__(self, "aggs", normalize_aggs(self.aggs, reserved=(self.key_name,)))

    @staticmethod
    def of(
        aggs: Mapping[str, Aggregation] | Sequence[tuple[str, Aggregation]],
        *,
        key_name: str = "key",
    ) -> RunningAggregateSpec:
        """Build a spec from a mapping ``name -> aggregation``."""
        return RunningAggregateSpec(normalize_aggs(aggs), key_name)

    def build(self, name: str) -> Operator:
        return RunningAggregateOperator(name, self)


class RunningAggregateOperator(KeyedAggregateBase):
    """State: ``key -> (accumulators, largest event time)``."""

    ports = 1

    def __init__(self, name: str, spec: RunningAggregateSpec) -> None:
        super().__init__(name, spec.aggs, spec.key_name)
        self.spec = spec

    def process(self, batch: Batch) -> Sequence[Batch | None]:
        p = self._prepare(batch)
        if p is None:
            return [None]
        gid, n_groups, rep = group_ids(p.codes)
        keys = [p.uniques[c] for c in p.codes[rep].tolist()]
        current = [self.store.get(k) for k in keys]
        accs = [c[0] if c is not None else self._initial() for c in current]
        max_ts = np.full(n_groups, np.iinfo(np.int64).min, np.int64)
        np.maximum.at(max_ts, gid, p.ts)
        folded = self._fold(accs, self._value_table(p, np.arange(len(p.ts))), gid, p.ts, p.seq)
        rows: list[ResultRow] = []
        for key, cur, acc, t in zip(keys, current, folded, max_ts.tolist(), strict=True):
            t = t if cur is None else max(t, cur[1])
            self.store.put(key, (acc, t))
            rows.append((key, None, None, acc, t))
        return [self._result_batch(rows, windowed=False)]

    def current(self) -> pa.Table:
        """Every key's current aggregate: the key column and one column per aggregation."""
        rows: list[ResultRow] = [(k, None, None, v[0], v[1]) for k, v in self.store.items()]
        batch = self._result_batch(rows, windowed=False)
        if batch is None:
            return pa.table({self.key_name: pa.array([], self._key_type or pa.string())})
        return pa.Table.from_batches([batch.data])
