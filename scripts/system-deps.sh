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
[ -e /usr/include/stdio.h ] || need+=(libc6-dev)
[ -x /usr/bin/python3 ] || need+=(python3)
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

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
echo "installing system packages: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q >/dev/null
$sudo apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
