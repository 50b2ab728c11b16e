"""Test support shared by every defectloop test suite (a dev dependency, never a runtime one).

- :mod:`~defectloop.testing.net`: ``free_port()``, ``wait_until(probe)`` (poll, never sleep blind).
- :mod:`~defectloop.testing.kafka`: topic collectors (``collect``), ``read_to_end``, a started
  broker for publishing, a TCP forwarder to take Kafka away and bring it back.
- :mod:`~defectloop.testing.bundles`: tiny contract-conforming model bundles (``BundleBuilder``).
- :mod:`~defectloop.testing.datasets`: a tiny synthetic COCO dataset (``make_coco_dir``).
- :mod:`~defectloop.testing.state`: a state home of the test's own (``isolate_state``).

Handler-level unit tests use FastStream's ``TestKafkaBroker``; delivery, ordering and commit
claims are tested on the real broker (the root conftest's ``kafka_bootstrap`` fixture).
"""
