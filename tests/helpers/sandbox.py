"""Both sandbox backends as one pytest fixture (``sandbox``: bubblewrap, and Docker in a private
dockerd when the ``docker`` marker is selected), and :func:`run` — one program, its output.
"""

from __future__ import annotations

import os

import pytest

from runner.languages import LanguageTable
from runner.sandbox.base import Limits, Sandbox, run_collect
from runner.sandbox.bubblewrap import BubblewrapSandbox
from tests.helpers.components import require


LANGS = LanguageTable()
LIMITS = Limits(wall_seconds=6, cpu_seconds=3, memory_bytes=256 * 1024 * 1024, processes=48, output_bytes=32 * 1024)


@pytest.fixture(params=["bubblewrap", pytest.param("docker", marks=pytest.mark.docker)])
async def sandbox(request):
    if request.param == "bubblewrap":
        require("bubblewrap", os.access("/usr/bin/bwrap", os.X_OK), "apt-get install bubblewrap")
        box: Sandbox = BubblewrapSandbox()
    else:
        from runner.sandbox.docker import DockerSandbox

        daemon = request.getfixturevalue("docker_daemon")
        box = DockerSandbox(daemon.url, image=request.getfixturevalue("docker_image"))
    yield box
    await box.close()


async def run(box: Sandbox, code: str, language: str = "python", limits: Limits = LIMITS):
    result, chunks = await run_collect(box, LANGS.get(language).spec(code, limits))
    out = b"".join(c.data for c in chunks if c.stream == "stdout").decode(errors="replace")
    err = b"".join(c.data for c in chunks if c.stream == "stderr").decode(errors="replace")
    return result, out, err
