#!/bin/sh
# Entry point of the persistence peer and the runner in compose:
#   with-service-token.sh SCOPE COMMAND...
# Uses $CODESYNC_SERVICE_TOKEN when set (e.g. from .env), else the token file deploy/bootstrap.sh
# made for SCOPE — and then names that file CODESYNC_SERVICE_TOKEN_FILE, so the service writes
# each renewed token back into it and a restart starts from the newest one. Then execs
# `codesync COMMAND...` (signals go straight to it).
set -eu
scope=$1
shift
if [ -z "${CODESYNC_SERVICE_TOKEN:-}" ]; then
    file="${CODESYNC_TOKEN_DIR:-/run/codesync-tokens}/$scope"
    if [ ! -s "$file" ]; then
        echo "no service token: set CODESYNC_SERVICE_TOKEN or run the migrate service first ($file is missing)" >&2
        exit 2
    fi
    CODESYNC_SERVICE_TOKEN=$(cat "$file")
    CODESYNC_SERVICE_TOKEN_FILE=$file
    export CODESYNC_SERVICE_TOKEN CODESYNC_SERVICE_TOKEN_FILE
fi
exec codesync "$@"
