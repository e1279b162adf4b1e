#!/usr/bin/env bash
# Installs the Debian packages CodeSync needs, only those that are missing.
#   scripts/system-deps.sh run    -> what `make up` needs (sandbox, languages)
#   scripts/system-deps.sh test   -> plus what the test suite drives (Chromium, dockerd, coturn, ...)
set -euo pipefail
profile=${1:-run}

need=()
want() { # want COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 || need+=("$2")
}
want bwrap bubblewrap  # >= 0.3 for --seccomp (the filter itself is built in Python: runner/sandbox/seccomp.py)
want node nodejs
want npm npm
want gcc gcc
# The bubblewrap sandbox runs the host's /usr: C needs the libc headers, Python /usr/bin/python3.
# Every toolchain is looked for where the sandbox looks (/usr), not on root's PATH: a rustup
# or SDK install under /root or /opt is invisible to a run. Keep in step with
# runner/image.py's PACKAGES (the Docker run image) and runner/languages.py.
[ -e /usr/include/stdio.h ] || need+=(libc6-dev)
[ -x /usr/bin/python3 ] || need+=(python3)
[ -x /usr/bin/g++ ] || need+=(g++)
[ -x /usr/bin/go ] || need+=(golang-go)
[ -x /usr/bin/rustc ] || need+=(rustc)
{ [ -x /usr/bin/javac ] && [ -x /usr/bin/java ]; } || need+=(default-jdk-headless)
[ -x /usr/bin/ruby ] || need+=(ruby)
[ -x /usr/bin/stdbuf ] || need+=(coreutils)
want ip iproute2
want unshare util-linux
if [ "$profile" = test ]; then
  want chromium chromium
  want dockerd docker.io
  want turnserver coturn
  want debootstrap debootstrap
  want docker-compose docker-compose
  want nginx nginx
  want redis-server redis-server
  [ -x "$(ls /usr/lib/postgresql/*/bin/postgres 2>/dev/null | head -n1)" ] || need+=(postgresql)
fi

if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  echo "installing system packages: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q >/dev/null
  $sudo apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

# TypeScript for the sandboxes: Debian's node-typescript comes without Node's type
# declarations, so the compiler and @types/node are pinned in runner/toolchains/typescript
# (npm lockfile) and installed there; bubblewrap binds that folder read-only at /opt/codesync,
# runner/image.py copies it into the Docker run image.
ts="$(cd "$(dirname "$0")/.." && pwd)/runner/toolchains/typescript"
if [ ! -f "$ts/node_modules/.package-lock.json" ] || [ "$ts/package-lock.json" -nt "$ts/node_modules/.package-lock.json" ]; then
  echo "installing the sandbox TypeScript toolchain ($ts)" >&2
  (cd "$ts" && npm ci --no-audit --no-fund --ignore-scripts --omit=dev >/dev/null)
fi
