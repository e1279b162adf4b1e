"""Benchmarks (run as ``python -m bench.<name>``)."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The editing traces (../shared/traces beside the checkout; CODESYNC_TRACES overrides).
TRACES = Path(os.environ.get("CODESYNC_TRACES") or ROOT.parent / "shared" / "traces")
