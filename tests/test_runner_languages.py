"""Every built-in language on both sandbox backends (real bubblewrap, real private dockerd):
hello world, a compile error (a ``failed`` run: the compiler's message on stderr and its exit
status), a multi-file project run from its entry file, and an interactive program answered
line by line through ``write_stdin`` and ended with ``close_stdin`` (Ctrl-D).

Also: the toolchain probe advertises what the sandbox has and leaves out (with one log line)
what it lacks; per-language limits; the project form's entry rules.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from dataclasses import dataclass

import pytest

from runner.languages import BUILTIN, TOOLCHAIN_LIMITS, Language, LanguageError, LanguageTable
from runner.sandbox.base import Execution, Limits, Sandbox, run_collect
from runner.sandbox.bubblewrap import BubblewrapSandbox
from tests.helpers.components import require
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.timeout(300)

LANGS = LanguageTable()
LIMITS = Limits(wall_seconds=15, cpu_seconds=5, memory_bytes=256 * 1024 * 1024, processes=48)


@dataclass(frozen=True)
class Case:
    hello: str
    bad: str  # a compile (or syntax) error mentioning undefined_name or a missing )
    bad_exit: int  # the compiler's (interpreter's) exit status
    bad_text: str  # in its message
    project: dict[str, str]  # several files; the output names every part
    entry: str
    interactive: str  # prompts "name?", answers "hello <name>" per line, "bye" at end of input


CASES: dict[str, Case] = {
    "python": Case(
        "print('hello, world')",
        "print(undefined_name", 1, "SyntaxError",
        {"app/main.py": "import helper\nfrom app import other\nprint(helper.greet('py'), other.NAME)\n",
         "app/helper.py": "def greet(who):\n    return 'hello ' + who\n",
         "app/other.py": "NAME = 'from a module'\n"},
        "app/main.py",
        "while True:\n    try:\n        n = input('name? ')\n    except EOFError:\n        break\n"
        "    print('hello', n)\nprint('bye')\n",
    ),
    "javascript": Case(
        "console.log('hello, world')",
        "console.log(undefined_name", 1, "SyntaxError",
        {"main.js": "const { greet } = require('./lib/greet');\nconsole.log(greet('js'), require('./lib/name.json').n)\n",
         "lib/greet.js": "exports.greet = (who) => 'hello ' + who;\n",
         "lib/name.json": '{"n": "from a module"}'},
        "main.js",
        "const rl = require('readline').createInterface({ input: process.stdin });\n"
        "process.stdout.write('name? ');\n"
        "rl.on('line', (n) => { console.log('hello ' + n); process.stdout.write('name? '); });\n"
        "rl.on('close', () => console.log('bye'));\n",
    ),
    "bash": Case(
        "echo 'hello, world'",
        "if then fi (", 2, "syntax error",
        {"run.sh": "source ./lib/greet.sh\necho \"$(greet sh) $(cat data/name.txt)\"\n",
         "lib/greet.sh": "greet() { echo \"hello $1\"; }\n", "data/name.txt": "from a module"},
        "run.sh",
        "printf 'name? '\nwhile IFS= read -r n; do echo \"hello $n\"; printf 'name? '; done\necho bye\n",
    ),
    "c": Case(
        '#include <stdio.h>\nint main(void) { printf("hello, world\\n"); return 0; }\n',
        "int main(void) { return undefined_name; }\n", 1, "undefined_name",
        {"main.c": '#include <stdio.h>\n#include "lib/greet.h"\nint main(void) { greet("c"); puts(NAME); return 0; }\n',
         "lib/greet.c": '#include <stdio.h>\n#include "greet.h"\nvoid greet(const char *w) { printf("hello %s ", w); }\n',
         "lib/greet.h": '#define NAME "from a module"\nvoid greet(const char *who);\n'},
        "main.c",
        '#include <stdio.h>\nint main(void) {\n  char n[64];\n  printf("name? ");\n'
        '  while (scanf("%63s", n) == 1) { printf("hello %s\\n", n); printf("name? "); }\n'
        '  printf("bye\\n");\n  return 0;\n}\n',
    ),
    "cpp": Case(
        '#include <iostream>\nint main() { std::cout << "hello, world" << std::endl; }\n',
        "int main() { return undefined_name; }\n", 1, "undefined_name",
        {"src/main.cpp": '#include <iostream>\n#include "greet.hpp"\nint main() { std::cout << greet("cpp") << " " << name() << std::endl; }\n',
         "src/greet.cpp": '#include "greet.hpp"\nstd::string greet(const std::string &w) { return "hello " + w; }\n',
         "src/name.cc": '#include "greet.hpp"\nstd::string name() { return "from a module"; }\n',
         "src/greet.hpp": "#include <string>\nstd::string greet(const std::string &who);\nstd::string name();\n"},
        "src/main.cpp",
        '#include <iostream>\n#include <string>\nint main() {\n  std::string n;\n  std::cout << "name? ";\n'
        '  while (std::cin >> n) { std::cout << "hello " << n << std::endl << "name? "; }\n'
        '  std::cout << "bye" << std::endl;\n}\n',
    ),
    "typescript": Case(
        'const greeting: string = "hello, world";\nconsole.log(greeting);\n',
        "const n: number = undefined_name;\n", 1, "undefined_name",
        {"src/main.ts": 'import { greet } from "./greet";\nimport { NAME } from "./lib/name";\nconsole.log(greet("ts"), NAME);\n',
         "src/greet.ts": "export function greet(who: string): string { return `hello ${who}`; }\n",
         "src/lib/name.ts": 'export const NAME: string = "from a module";\n'},
        "src/main.ts",
        'import * as readline from "readline";\n'
        "const rl = readline.createInterface({ input: process.stdin });\n"
        'process.stdout.write("name? ");\n'
        'rl.on("line", (n: string) => { console.log(`hello ${n}`); process.stdout.write("name? "); });\n'
        'rl.on("close", () => console.log("bye"));\n',
    ),
    "go": Case(
        'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("hello, world") }\n',
        "package main\n\nfunc main() { undefined_name() }\n", 2, "undefined_name",
        {"main.go": 'package main\n\nimport (\n\t"fmt"\n\t"app/name"\n)\n\nfunc main() { fmt.Println(greet("go"), name.Name) }\n',
         "greet.go": 'package main\n\nfunc greet(who string) string { return "hello " + who }\n',
         "name/name.go": 'package name\n\nconst Name = "from a module"\n'},
        "main.go",
        'package main\n\nimport (\n\t"bufio"\n\t"fmt"\n\t"os"\n)\n\nfunc main() {\n\tfmt.Print("name? ")\n'
        "\tin := bufio.NewScanner(os.Stdin)\n\tfor in.Scan() {\n\t\tfmt.Println(\"hello \" + in.Text())\n"
        '\t\tfmt.Print("name? ")\n\t}\n\tfmt.Println("bye")\n}\n',
    ),
    "rust": Case(
        'fn main() { println!("hello, world"); }\n',
        "fn main() { undefined_name(); }\n", 1, "undefined_name",
        {"main.rs": 'mod greet;\nmod name;\nfn main() { println!("{} {}", greet::greet("rust"), name::NAME); }\n',
         "greet.rs": 'pub fn greet(who: &str) -> String { format!("hello {}", who) }\n',
         "name.rs": 'pub const NAME: &str = "from a module";\n'},
        "main.rs",
        "use std::io::{self, BufRead, Write};\nfn main() {\n    print!(\"name? \");\n    io::stdout().flush().unwrap();\n"
        "    for line in io::stdin().lock().lines() {\n        println!(\"hello {}\", line.unwrap());\n"
        "        print!(\"name? \");\n        io::stdout().flush().unwrap();\n    }\n    println!(\"bye\");\n}\n",
    ),
    "java": Case(
        'public class Main { public static void main(String[] a) { System.out.println("hello, world"); } }\n',
        "public class Main { public static void main(String[] a) { undefined_name(); } }\n", 1, "undefined_name",
        {"com/example/App.java": "package com.example;\nimport com.example.util.Name;\n"
                                 "public class App { public static void main(String[] a) {"
                                 ' System.out.println(Greet.greet("java") + " " + Name.NAME); } }\n',
         "com/example/Greet.java": 'package com.example;\nclass Greet { static String greet(String w) { return "hello " + w; } }\n',
         "com/example/util/Name.java": 'package com.example.util;\npublic class Name { public static final String NAME = "from a module"; }\n'},
        "com/example/App.java",
        "import java.util.Scanner;\npublic class Main {\n  public static void main(String[] a) {\n"
        '    Scanner in = new Scanner(System.in);\n    System.out.print("name? "); System.out.flush();\n'
        '    while (in.hasNextLine()) { System.out.println("hello " + in.nextLine());'
        ' System.out.print("name? "); System.out.flush(); }\n    System.out.println("bye");\n  }\n}\n',
    ),
    "ruby": Case(
        'puts "hello, world"\n',
        "def f(\n  undefined_name\n", 1, "syntax error",
        {"bin/main.rb": 'require_relative "../lib/greet"\nputs "#{greet("rb")} #{NAME}" if __FILE__ == $0\n',
         "lib/greet.rb": 'require_relative "name"\ndef greet(who) = "hello #{who}"\n',
         "lib/name.rb": 'NAME = "from a module"\n'},
        "bin/main.rb",
        'print "name? "\nwhile (n = gets)\n  puts "hello #{n.chomp}"\n  print "name? "\nend\nputs "bye"\n',
    ),
}

LANGUAGES = sorted(CASES)


def test_every_builtin_language_has_a_case():
    assert {lang.name for lang in BUILTIN} == set(CASES)
    assert {"cpp", "typescript", "go", "rust", "java", "ruby"} <= set(CASES)


async def collect(box: Sandbox, spec):
    result, chunks = await run_collect(box, spec)
    out = b"".join(c.data for c in chunks if c.stream == "stdout").decode(errors="replace")
    err = b"".join(c.data for c in chunks if c.stream == "stderr").decode(errors="replace")
    return result, out, err


def closed(spec):
    """A run whose stdin reads end-of-file at once (nothing will be typed)."""
    return dataclasses.replace(spec, stdin_open=False)


@pytest.mark.parametrize("language", LANGUAGES)
async def test_hello_world(sandbox, language):
    result, out, err = await collect(sandbox, closed(LANGS.get(language).spec(CASES[language].hello, LIMITS)))
    assert (result.status, result.exit_code, out) == ("finished", 0, "hello, world\n"), (result, out, err)


@pytest.mark.parametrize("language", LANGUAGES)
async def test_compile_error_is_stderr_with_the_compilers_status(sandbox, language):
    case = CASES[language]
    result, out, err = await collect(sandbox, closed(LANGS.get(language).spec(case.bad, LIMITS)))
    assert result.status == "failed" and result.exit_code == case.bad_exit, (result, out, err)
    assert result.reason == f"exit code {case.bad_exit}"
    assert case.bad_text in err, err
    assert out == "", out  # diagnostics are stderr, even tsc's (it prints them on stdout)


@pytest.mark.parametrize("language", LANGUAGES)
async def test_multi_file_project_runs_from_its_entry(sandbox, language):
    case = CASES[language]
    spec = LANGS.get(language).project_spec(case.project, case.entry, LIMITS)
    result, out, err = await collect(sandbox, closed(spec))
    short = language if language != "javascript" else "js"
    short = {"python": "py", "bash": "sh", "typescript": "ts", "ruby": "rb"}.get(language, short)
    assert (result.status, out) == ("finished", f"hello {short} from a module\n"), (result, out, err)


class Console:
    """Reads a run's output as it arrives (as the room would) and types into it."""

    def __init__(self, execution: Execution) -> None:
        self.execution = execution
        self.out = bytearray()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for chunk in self.execution:
            self.out += chunk.data

    def text(self) -> str:
        return self.out.decode(errors="replace")

    async def expect(self, text: str, count: int = 1, timeout: float = 30) -> None:
        await wait_for(lambda: self.text().count(text) >= count, timeout=timeout,
                       what=f"{text!r} x{count} in {self.text()!r}")

    async def type(self, line: str) -> None:
        result = await self.execution.write_stdin(line.encode())
        assert result.accepted and result.bytes == len(line.encode()), result


@pytest.mark.parametrize("language", LANGUAGES)
async def test_interactive_input_line_by_line(sandbox, language):
    execution = await sandbox.start(LANGS.get(language).spec(CASES[language].interactive, LIMITS))
    console = Console(execution)
    # The prompt is there before anything is typed (no output buffering waits for the exit).
    await console.expect("name? ")
    await console.type("Ann\n")
    await console.expect("hello Ann\n")
    assert "hello Bob" not in console.text()
    await console.type("Bob\n")
    await console.expect("hello Bob\n")
    assert (await execution.close_stdin()).accepted  # Ctrl-D
    result = await asyncio.wait_for(execution.wait(), 30)
    await console.task
    assert (result.status, result.exit_code) == ("finished", 0), (result, console.text())
    assert console.text() == "name? hello Ann\nname? hello Bob\nname? bye\n"
    late = await execution.write_stdin(b"too late\n")
    assert not late.accepted and late.reason == "the program has ended"


# ---------------------------------------------------------------------- probe, limits, entries
async def test_probe_advertises_what_the_sandbox_has(sandbox):
    table = LanguageTable()
    names = await table.probe(sandbox)
    assert set(names) == set(CASES), table.missing  # this machine has every toolchain (system-deps, image)
    assert table.missing == {}


async def test_probe_leaves_out_a_missing_toolchain_with_one_log_line(caplog):
    require("bubblewrap", os.access("/usr/bin/bwrap", os.X_OK), "apt-get install bubblewrap")
    table = LanguageTable([*BUILTIN, Language("cobol", "main.cob", ["cobc-not-installed", "-x", "{entry}"])])
    with caplog.at_level(logging.WARNING, logger="runner.languages"):
        names = await table.probe(BubblewrapSandbox())
    assert "cobol" not in names and "python" in names
    assert table.missing == {"cobol": ["cobc-not-installed"]}
    lines = [r.getMessage() for r in caplog.records if "lacks toolchains" in r.getMessage()]
    assert lines == ["bubblewrap sandbox lacks toolchains; not offered: cobol (no cobc-not-installed)"]
    with pytest.raises(LanguageError, match="not installed in this runner's sandbox"):
        table.get("cobol")


def test_per_language_limits_raise_only_what_a_toolchain_needs():
    base = Limits()
    for name in ("python", "javascript", "bash", "c", "cpp", "ruby"):
        assert LANGS.get(name).limits_for(base) == base, name
    for name in ("java", "go", "rust", "typescript"):
        raised = LANGS.get(name).limits_for(base)
        assert raised.memory_bytes == TOOLCHAIN_LIMITS["memory_bytes"] > base.memory_bytes
        assert raised.processes == TOOLCHAIN_LIMITS["processes"] > base.processes
        assert raised.output_bytes == base.output_bytes  # untouched fields stay
        assert LANGS.get(name).spec("x", base).limits == raised
    roomy = Limits(memory_bytes=2048 * 1024 * 1024)
    assert LANGS.get("java").limits_for(roomy).memory_bytes == roomy.memory_bytes  # never lowered


def test_project_entry_rules():
    python = LANGS.get("python")
    with pytest.raises(LanguageError, match="not in the project"):
        python.project_spec({"a.py": b""}, "b.py")
    with pytest.raises(LanguageError, match="not a python file"):
        python.project_spec({"a.py": b"", "notes.txt": b""}, "notes.txt")
    java = LANGS.get("java").project_spec(CASES["java"].project, CASES["java"].entry)
    assert java.run[-1] == "com.example.App" and java.compile is not None
    assert [a for a in java.compile if a.endswith(".java")] == sorted(CASES["java"].project)
    c = LANGS.get("c").project_spec({"-rf.c": b"", "main.c": b""}, "main.c")
    assert "./-rf.c" in c.compile and "-rf.c" not in c.compile  # never an option
    go = LANGS.get("go").project_spec({"cmd/main.go": b"package main"}, "cmd/main.go")
    assert go.files["go.mod"].startswith(b"module app") and go.compile[-1] == "./cmd"
    own = LANGS.get("go").project_spec({"main.go": b"", "go.mod": b"module mine\n"}, "main.go")
    assert own.files["go.mod"] == b"module mine\n"  # the project's own go.mod wins


def test_languages_file_accepts_projects_limits_and_env(tmp_path):
    path = tmp_path / "languages.json"
    path.write_text('{"lua": {"file": "main.lua", "run": ["lua5.4", "{entry}"], "extensions": [".lua"],'
                    ' "env": {"LUA_PATH": "/work/?.lua"}, "limits": {"memory_bytes": 1073741824}}}')
    lua = LanguageTable.load(path).get("lua")
    spec = lua.project_spec({"src/main.lua": b"print(1)", "src/m.lua": b""}, "src/main.lua")
    assert spec.run == ["lua5.4", "src/main.lua"] and spec.env == {"LUA_PATH": "/work/?.lua"}
    assert spec.limits.memory_bytes == 1073741824
    path.write_text('{"lua": {"file": "main.lua", "run": ["lua"], "limits": {"memory": 1}}}')
    with pytest.raises(LanguageError, match="limits must map"):
        LanguageTable.load(path)
