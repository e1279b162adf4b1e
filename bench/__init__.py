"""Benchmarks (run as ``python -m bench.<name>``)."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The editing traces live in the repository (tests/data/traces, CC BY 4.0); CODESYNC_TRACES overrides.
TRACES = Path(os.environ.get("CODESYNC_TRACES") or ROOT / "tests" / "data" / "traces")
