"""The one set of test helpers, shared by the tests (tests/test_*.py, tests/browser/) and the
benchmarks (bench/). Nothing here imports a test module or bench (tests/test_layers.py checks).

- ``components`` — ROOT, ``require`` (skip locally, fail under CI=true), free ports, Redis and a
  fresh PostgreSQL database;
- ``wait`` — ``wait_for`` a condition, ``wait_http_ok``; never a fixed sleep;
- ``processes`` — ``codesync <command>`` as a child process (:class:`Service`), ``child_env``;
- ``stack`` — :class:`Stack`: signaling node(s) plus service peers on one database, seeded
  rooms and tokens, ``signaling_stack``, ``joined`` (headless peers), ``SignalClient``;
- ``api`` — the signaling app in-process on a loopback port (``in_process_api``, ``Api``);
- ``persistence`` / ``runner`` / ``sandbox`` — the service peers and sandboxes under test;
- ``memory_peers`` — whole ``peer.Room``s over an in-memory hub and link pair;
- ``netns`` — the browser tests' private network namespace and Chromium;
- ``traces`` — the editing traces (tests/data/traces) replayed;
- ``dockerd``, ``compose``, ``proxy``, ``smtp``, ``oauth``, ``fuzzing`` — a private dockerd, the
  compose stack, nginx, an SMTP server, an OpenID provider, Hypothesis against live services.
"""
