"""Realistic, seeded event generators for demos, tests and benchmarks.

Pure Python, no Kafka: turn records into ``(key, value)`` pairs with :func:`encode_records` and
write them with :func:`raystream.generate.produce.produce_records` (kept out of this namespace so
importing the generators never loads the Kafka client).

* payments: :class:`PaymentsSpec`, :func:`customer_profiles`, :func:`merchants`, :func:`encoded`
  (the plain payment iterator is ``raystream.generate.payments.payments``: a package-level name
  ``payments`` would hide the submodule).
* fraud: :class:`FraudSpec`, :class:`FraudRules`, :func:`fraud_payments` -> ``(payments,
  ground_truth)``, :func:`detect` (the reference detector).
* orders: :class:`OrdersSpec`, :func:`order_events`, :func:`fate`, :func:`expected_outcome`.
"""

from raystream.generate.fraud import (
    PATTERNS,
    FraudInstance,
    FraudRules,
    FraudSpec,
    detect,
    fraud_payments,
    ground_truth,
)
from raystream.generate.orders import (
    SAGA_STEPS,
    Fate,
    OrdersSpec,
    Outcome,
    catalog,
    expected_outcome,
    fate,
    order_events,
)
from raystream.generate.payments import (
    PaymentsSpec,
    customer_profiles,
    encode_records,
    encoded,
    merchants,
)

__all__ = [
    "PATTERNS",
    "SAGA_STEPS",
    "Fate",
    "FraudInstance",
    "FraudRules",
    "FraudSpec",
    "OrdersSpec",
    "Outcome",
    "PaymentsSpec",
    "catalog",
    "customer_profiles",
    "detect",
    "encode_records",
    "encoded",
    "expected_outcome",
    "fate",
    "fraud_payments",
    "ground_truth",
    "merchants",
    "order_events",
]
