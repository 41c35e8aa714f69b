"""Re-keying: make a value field the record key (before a repartition topic or an aggregation)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from raystream.operators.base import Batch, Operator, OperatorSpec


class KeyByOperator(Operator):
    """Set each record's key to the value of ``field`` (null where the field is missing)."""

    def __init__(self, name: str, field: str) -> None:
        self.name = name
        self.field = field

    def process(self, batch: Batch) -> Sequence[Batch | None]:
        if self.field in batch.data.schema.names:
            keys = batch.data.column(self.field)
        else:
            keys = pa.nulls(batch.num_rows)
        return [batch.with_keys(keys)]


@dataclass(frozen=True)
class KeyBySpec(OperatorSpec):
    """Spec of the re-keying step of ``group_by(field)``."""

    field: str
    kind = "key_by"

    def build(self, name: str) -> Operator:
        return KeyByOperator(name, self.field)
