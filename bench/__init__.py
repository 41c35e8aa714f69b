"""Benchmarks: the workloads, the hand-written confluent-kafka baseline, and the runner.

* :mod:`bench.workload` puts the input on a broker and computes the expected results.
* :mod:`bench.registry` is the contract: a benchmark is a function ``RunContext -> Measurement``
  registered under a name; the runner turns its measurement into a verified :class:`Result`.
* :mod:`bench.baseline` registers the baseline runs (raw consume, W1 and W2, ALOS and EOS).
* :mod:`bench.verify` reads an output topic back and checks it against the expected results.
* :mod:`bench.run` is the command: ``python -m bench.run --records 1000000``.
"""
