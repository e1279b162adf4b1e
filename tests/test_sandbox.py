"""Ordinary runs on both sandbox backends: every language, ordering, stdin, stop, languages file."""

from __future__ import annotations

import asyncio
import json

import pytest

from runner.languages import LanguageError, LanguageTable
from runner.sandbox.base import Limits
from tests.helpers.sandbox import run

pytestmark = pytest.mark.timeout(120)

HELLO = {
    "python": "import sys\nprint('hello from', sys.version_info[0])",
    "javascript": "console.log('hello from', typeof process)",
    "bash": "echo hello from $BASH_VERSINFO",
    "c": '#include <stdio.h>\nint main(void) { printf("hello from %d\\n", 17); return 0; }\n',
}


@pytest.mark.parametrize("language", sorted(HELLO))
async def test_each_language_runs(sandbox, language):
    result, out, err = await run(sandbox, HELLO[language], language)
    assert (result.status, result.exit_code) == ("finished", 0), (result, out, err)
    assert out.startswith("hello from "), (out, err)


async def test_compile_error_is_a_failed_run_with_the_diagnostics(sandbox):
    result, out, err = await run(sandbox, "int main(void) { return undefined_name; }", "c")
    assert result.status == "failed" and result.exit_code == 1, result
    assert "undefined_name" in err


async def test_streams_are_distinct_and_in_order_and_stdin_ends_when_closed(sandbox):
    # Two pipes have no common order; a pause between writes makes "arrival order" well defined.
    code = ("import sys, time\nprint('in', repr(sys.stdin.read()), flush=True)\n"
            "for i in range(3):\n    time.sleep(0.1)\n    print('out', i, flush=True)\n    time.sleep(0.1)\n"
            "    print('err', i, file=sys.stderr, flush=True)\n"
            "sys.exit(3)")
    box = sandbox
    execution = await box.start(LanguageTable().get("python").spec(code, Limits(wall_seconds=10)))
    assert (await execution.close_stdin()).accepted  # Ctrl-D before any input: read() returns ''
    chunks = [chunk async for chunk in execution]
    result = await execution.wait()
    assert (result.status, result.exit_code) == ("failed", 3)
    merged: list[list] = []  # consecutive chunks of one stream joined (print() may write in pieces)
    for c in chunks:
        if merged and merged[-1][0] == c.stream:
            merged[-1][1] += c.data
        else:
            merged.append([c.stream, c.data])
    lines = [(stream, line) for stream, data in merged for line in data.decode().splitlines() if line]
    assert lines == [("stdout", "in ''"), ("stdout", "out 0"), ("stderr", "err 0"), ("stdout", "out 1"),
                     ("stderr", "err 1"), ("stdout", "out 2"), ("stderr", "err 2")]


async def test_stop_from_another_task_while_output_streams(sandbox):
    code = "import time\ni = 0\nwhile True:\n    print(i, flush=True)\n    i += 1\n    time.sleep(0.02)"
    execution = await sandbox.start(LanguageTable().get("python").spec(code, Limits(wall_seconds=30)))
    seen = []

    async def reader():
        async for chunk in execution:
            seen.append(chunk)

    task = asyncio.create_task(reader())
    while len(seen) < 5:
        await asyncio.sleep(0.01)
    await execution.stop("killed", "stopped by test")
    result = await asyncio.wait_for(execution.wait(), 10)
    await asyncio.wait_for(task, 5)
    assert (result.status, result.reason) == ("killed", "stopped by test")
    assert result.duration < 10


def test_languages_file_extends_and_overrides(tmp_path):
    path = tmp_path / "languages.json"
    path.write_text(json.dumps({
        "ruby": {"file": "main.rb", "run": ["ruby", "main.rb"], "image": "ruby:3", "aliases": ["rb"]},
        "c": {"file": "main.c", "compile": ["cc", "-o", "main", "main.c"], "run": ["./main"]},
    }))
    table = LanguageTable.load(path)
    assert table.get("rb").image == "ruby:3" and table.get("ruby").run == ["ruby", "main.rb"]
    assert table.get("c").compile == ["cc", "-o", "main", "main.c"]
    assert table.get("py").name == "python" and table.get("js").name == "javascript"
    with pytest.raises(LanguageError, match="unsupported language"):
        table.get("cobol")
    path.write_text(json.dumps({"bad": {"file": "../x", "run": ["x"]}}))
    with pytest.raises(LanguageError, match="plain file name"):
        LanguageTable.load(path)
    path.write_text("{nope")
    with pytest.raises(LanguageError, match="cannot read"):
        LanguageTable.load(path)


async def test_a_run_without_stdin_reads_eof_and_refuses_input(sandbox):
    import dataclasses

    spec = LanguageTable().get("python").spec("import sys, time\nprint(repr(sys.stdin.read()), flush=True)\n"
                                              "time.sleep(0.5)", Limits(wall_seconds=10))
    execution = await sandbox.start(dataclasses.replace(spec, stdin_open=False))
    refused = await execution.write_stdin(b"x")
    assert (refused.accepted, refused.reason) == (False, "input is closed (end of input was sent)")
    chunks = [chunk async for chunk in execution]
    assert (await execution.wait()).status == "finished"
    assert b"".join(c.data for c in chunks) == b"''\n"
