"""Runner benchmark: request → first output byte and → finished (compile + run), per language
and backend; output throughput; the interactive-input round trip.

Two levels, both with the real sandboxes:
- ``sandbox``: ``Sandbox.start()`` → first chunk → result (the isolation cost alone);
- ``doc``: ``RoomRuns.request()`` → first byte of output in the room document → final status
  (what a peer sees, minus the data channel's sub-millisecond hop).

The Docker half starts a private dockerd (tests/helpers/dockerd.py) and imports the run image
(cached rootfs under /var/cache/codesync).

``stdin round trip``: a running program that answers every line; ``RoomRuns.input()`` →
the input's echo in the run's ``output`` Y.Text (what every peer sees at once), and → the
program's answer after it (the whole trip through the sandbox's stdin and stdout).

``--seccomp-cost`` adds what the seccomp deny-list costs per system call: a C loop of
``getppid()`` (not on the list, so every rule is evaluated — the worst case) under plain
``bwrap`` with and without ``--seccomp``, alternating, so machine load hits both alike.

    python -m bench.runner_latency [--backends bubblewrap,docker] [--repeat 10] [--languages c,go]
                                   [--seccomp-cost]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time

import pycrdt

from runner.languages import LanguageTable
from runner.runs import RoomRuns, RunnerConfig, RunRequest
from runner.sandbox.base import Limits, Sandbox

PROGRAMS = {
    "python": "print(1)",
    "javascript": "console.log(1)",
    "bash": "echo 1",
    "c": '#include <stdio.h>\nint main(void) { printf("1\\n"); return 0; }\n',
    "cpp": '#include <iostream>\nint main() { std::cout << 1 << std::endl; }\n',
    "typescript": "const one: number = 1;\nconsole.log(one);\n",
    "go": 'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println(1) }\n',
    "rust": 'fn main() { println!("1"); }\n',
    "java": "public class Main { public static void main(String[] a) { System.out.println(1); } }\n",
    "ruby": "puts 1\n",
}
# Answer every line typed (the stdin round trip).
ECHO = {
    "python": "while True:\n    try:\n        line = input()\n    except EOFError:\n        break\n    print('got ' + line)\n",
    "c": '#include <stdio.h>\nint main(void) { char b[256];\n'
         '  while (fgets(b, sizeof b, stdin)) printf("got %s", b);\n  return 0; }\n',
}
COLD_LANGUAGES = ("python", "bash")  # docker without a pool: the container start dominates
FLOOD_BYTES = 8 * 1024 * 1024
FLOOD = {"python": f"import sys\nsys.stdout.write('x' * {FLOOD_BYTES})\n"}


def ms(values: list[float]) -> str:
    values = sorted(values)
    p90 = values[min(len(values) - 1, int(round(0.9 * (len(values) - 1))))]
    return f"{statistics.median(values) * 1000:7.1f} / {p90 * 1000:7.1f}"


async def sandbox_level(box: Sandbox, table: LanguageTable, language: str, repeat: int) -> tuple[list, list]:
    first, done = [], []
    for _ in range(repeat):
        spec = table.get(language).spec(PROGRAMS[language], Limits())
        await box.prewarm(spec.limits)  # steady state: requests further apart than a container start
        t0 = time.perf_counter()
        execution = await box.start(spec)
        t_first = None
        async for _chunk in execution:
            t_first = t_first or time.perf_counter()
        result = await execution.wait()
        t_done = time.perf_counter()
        assert result.status == "finished", result
        first.append(t_first - t0)
        done.append(t_done - t0)
    return first, done


async def doc_level(box: Sandbox, table: LanguageTable, language: str, repeat: int) -> tuple[list, list]:
    first, done = [], []
    doc = pycrdt.Doc()
    doc.get("source", type=pycrdt.Text).insert(0, PROGRAMS[language])
    runs = RoomRuns(doc, box, table, RunnerConfig(rate_burst=1000, rate_per_minute=100000, keep_runs=5))
    runs_map = doc.get("runs", type=pycrdt.Map)
    try:
        for i in range(repeat):
            run_id = f"{language}-{i}"
            got_first = asyncio.Event()
            got_done = asyncio.Event()
            marks: dict[str, float] = {}

            def on_change(_event, run_id=run_id, marks=marks, got_first=got_first, got_done=got_done):
                # Inside the callback the doc is mid-transaction; look on the next loop turn.
                asyncio.get_running_loop().call_soon(check, run_id, marks, got_first, got_done)

            def check(run_id, marks, got_first, got_done):
                entry = runs_map.get(run_id)
                if entry is None:
                    return
                if "first" not in marks and len(entry["output"]) > 0:
                    marks["first"] = time.perf_counter()
                    got_first.set()
                if "done" not in marks and entry.get("status") in ("finished", "failed", "timeout", "killed"):
                    marks["done"] = time.perf_counter()
                    got_done.set()

            sub = doc.observe(on_change)
            await box.prewarm(table.get(language).limits_for(runs.config.limits))
            t0 = time.perf_counter()
            decision = await runs.request(RunRequest(run_id, language, "bench", "bench", "owner", doc.get_state()))
            assert decision.accepted, decision
            await asyncio.wait_for(got_done.wait(), 60)
            await asyncio.wait_for(got_first.wait(), 5)
            doc.unobserve(sub)
            assert runs_map[run_id]["status"] == "finished", runs_map[run_id].get("reason")
            first.append(marks["first"] - t0)
            done.append(marks["done"] - t0)
    finally:
        await runs.close()
    return first, done


async def stdin_round_trip(box: Sandbox, table: LanguageTable, language: str, repeat: int) -> tuple[list, list]:
    """``RoomRuns.input`` → the echo in the run's output Y.Text, and → the program's answer."""
    doc = pycrdt.Doc()
    doc.get("source", type=pycrdt.Text).insert(0, ECHO[language])
    limits = Limits(wall_seconds=120, cpu_seconds=60)
    runs = RoomRuns(doc, box, table, RunnerConfig(limits=limits, input_burst=1000, input_per_second=1000))
    runs_map = doc.get("runs", type=pycrdt.Map)
    echo, answer = [], []
    try:
        await box.prewarm(table.get(language).limits_for(limits))
        assert (await runs.request(RunRequest("echo", language, "bench", "bench", "owner"))).accepted
        while runs_map.get("echo") is None or runs_map["echo"].get("status") != "running":
            await asyncio.sleep(0.01)
        output = runs_map["echo"]["output"]
        for i in range(repeat):
            line = f"line {i}"
            seen: dict[str, float] = {}
            changed = asyncio.Event()

            start = len(str(output))

            def look(line=line, seen=seen, changed=changed, start=start):
                text = str(output)[start:]
                now = time.perf_counter()
                if text.startswith(f"{line}\n"):
                    seen.setdefault("echo", now)
                if f"got {line}\n" in text:
                    seen.setdefault("answer", now)
                changed.set()

            def on_change(_event, look=look):
                # Inside the callback the doc is mid-transaction; look on the next loop turn.
                asyncio.get_running_loop().call_soon(look)

            sub = doc.observe(on_change)
            t0 = time.perf_counter()
            decision = await runs.input("echo", line + "\n", "bench", "owner")
            assert decision.accepted, decision
            while "answer" not in seen:
                changed.clear()
                await asyncio.wait_for(changed.wait(), 30)
            doc.unobserve(sub)
            echo.append(seen["echo"] - t0)
            answer.append(seen["answer"] - t0)
        await runs.input("echo", None, "bench", "owner", eof=True)
    finally:
        await runs.close()
    return echo, answer


async def throughput(box: Sandbox, table: LanguageTable) -> tuple[float, float]:
    limits = Limits(output_bytes=FLOOD_BYTES, wall_seconds=60, cpu_seconds=30)
    spec = table.get("python").spec(FLOOD["python"], limits)
    t0 = time.perf_counter()
    execution = await box.start(spec)
    total = sum([len(chunk.data) async for chunk in execution])
    raw = total / (time.perf_counter() - t0)
    # Through the document (decoding + one Y.Text insert per 50 ms batch).
    doc = pycrdt.Doc()
    doc.get("source", type=pycrdt.Text).insert(0, FLOOD["python"])
    runs = RoomRuns(doc, box, table, RunnerConfig(limits=limits))
    t0 = time.perf_counter()
    assert (await runs.request(RunRequest("flood", "python", "bench", "bench", "owner"))).accepted
    runs_map = doc.get("runs", type=pycrdt.Map)
    while runs_map["flood"].get("status") not in ("finished", "failed", "timeout", "killed"):
        await asyncio.sleep(0.01)
    in_doc = len(str(runs_map["flood"]["output"])) / (time.perf_counter() - t0)
    await runs.close()
    return raw, in_doc


async def bench_backend(name: str, box: Sandbox, repeat: int, languages: list[str], stdin: bool = True) -> list[str]:
    table = LanguageTable()
    rows = []
    for language in languages:
        await sandbox_level(box, table, language, 1)  # warm caches (page cache, image layers)
        s_first, s_done = await sandbox_level(box, table, language, repeat)
        d_first, d_done = await doc_level(box, table, language, repeat)
        rows.append(f"| {name} | {language} | {ms(s_first)} | {ms(s_done)} | {ms(d_first)} | {ms(d_done)} |")
        print(rows[-1], flush=True)
    for language in [lang for lang in ECHO if stdin and lang in languages]:
        echo, answer = await stdin_round_trip(box, table, language, repeat * 2)
        rows.append(f"| {name} | stdin round trip ({language}): input → echo in doc / → answer in doc | "
                    f"{ms(echo)} | {ms(answer)} | | |")
        print(rows[-1], flush=True)
    if not stdin:
        return rows
    raw, in_doc = await throughput(box, table)
    rows.append(f"| {name} | output throughput (python, 8 MiB) | sandbox {raw / 1e6:.0f} MB/s | | doc {in_doc / 1e6:.0f} MB/s | |")
    print(rows[-1], flush=True)
    return rows


SYSCALL_LOOP = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) syscall(SYS_getppid);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    return 0;
}
"""


def seccomp_cost(repeat: int, calls: int = 2_000_000) -> str:
    """ns per getppid() in bwrap without / with the deny-list (medians of alternating runs)."""
    from runner.sandbox.seccomp import build_filter

    work = tempfile.mkdtemp(prefix="codesync-bench-")
    try:
        src = os.path.join(work, "loop.c")
        with open(src, "w") as fh:
            fh.write(SYSCALL_LOOP)
        subprocess.run(["gcc", "-O2", "-o", os.path.join(work, "loop"), src], check=True)
        fd = os.memfd_create("filter")
        os.write(fd, build_filter())
        base = ["bwrap", "--unshare-all", "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib",
                "--symlink", "usr/lib64", "/lib64", "--ro-bind", work, "/prog", "--proc", "/proc", "--dev", "/dev"]
        samples: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(repeat):
            for filtered in (False, True):
                os.lseek(fd, 0, os.SEEK_SET)
                extra = ["--seccomp", str(fd)] if filtered else []
                out = subprocess.run([*base, *extra, "/prog/loop", str(calls)], pass_fds=(fd,), check=True,
                                     capture_output=True, text=True).stdout
                samples[filtered].append(float(out))
        os.close(fd)
        plain, filtered = statistics.median(samples[False]), statistics.median(samples[True])
        return (f"| bubblewrap | seccomp cost: getppid() ns/call, no filter → filter (median of {repeat}) | "
                f"{plain:.0f} → {filtered:.0f} ({filtered - plain:+.0f} ns) | | | |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def main(backends: list[str], repeat: int, seccomp: bool = False, languages: list[str] | None = None) -> None:
    languages = languages or list(PROGRAMS)
    print("| backend | language | sandbox: first output ms (median / p90) | sandbox: finished ms | "
          "request → first output in doc ms | request → finished in doc ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    if "bubblewrap" in backends:
        from runner.sandbox.bubblewrap import BubblewrapSandbox

        await bench_backend("bubblewrap", BubblewrapSandbox(), repeat, languages)
        if seccomp:
            print(seccomp_cost(repeat), flush=True)
    if "docker" in backends:
        from runner.image import ensure_image
        from runner.sandbox.docker import DockerSandbox
        from tests.helpers.dockerd import running_dockerd

        with running_dockerd() as daemon:
            client = daemon.client()
            image = ensure_image(client)
            for label, pool in (("docker (warm pool)", 1), ("docker (cold, no pool)", 0)):
                box = DockerSandbox(daemon.url, image=image, pool_size=pool)
                try:
                    if pool:
                        await bench_backend(label, box, repeat, languages)
                    else:
                        cold = [lang for lang in languages if lang in COLD_LANGUAGES]
                        await bench_backend(label, box, repeat, cold, stdin=False)
                finally:
                    await box.close()
            client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", default="bubblewrap,docker")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--languages", default=",".join(PROGRAMS), help="comma-separated (default: all)")
    parser.add_argument("--seccomp-cost", action="store_true", help="also measure the filter's per-syscall cost")
    args = parser.parse_args()
    asyncio.run(main(args.backends.split(","), args.repeat, args.seccomp_cost, args.languages.split(",")))
