"""The platform every CodeSync process stands on, and the command line on top.

Layers (imports point downwards only; ``tests/test_layers.py`` keeps it so)::

    codesync.cli, codesync.supervisor        the `codesync` command: starts the services
    signaling/   peer/persistence/  runner/  the services
    peer/                                    the headless WebRTC peer library
    codesync.settings, db, models, logs,     the platform: configuration, database models
    migrations, opsserver                    and migrations, logging, /healthz + /metrics

The platform modules import nothing of the services; the peer library imports nothing of
the server; services never import each other; only the CLI and the supervisor (at the top)
know every service.
"""
