"""The metrics sidecar: GPU, energy and training progress of one pod, for Prometheus.

Run it as ``python -m trainop.exporter`` or call ``main(argv)``. Which modules
may do I/O:

- pure (no I/O): ``names`` (every metric name), ``visibility``, ``progress``,
  ``collector.build_metrics``;
- I/O: ``nvml`` (the only module that imports pynvml), ``gpu``, ``rapl``,
  ``collector.TrainopCollector`` (reads the run dir), ``app`` (HTTP, signals);
- test double: ``fake_nvml.FakeNVML``.

See README.md here for how the sidecar sees exactly its pod's GPUs.
"""

from trainop.exporter.app import main

__all__ = ["main"]
