#!/bin/sh
# compose service "migrate" (one-shot, runs on every `up`): apply database migrations, then make
# sure the persistence peer and the runner each have a service token signaling accepts, in the
# shared "service-tokens" volume (mode 0600, owned by the codesync user):
#   - a token that is accepted is kept (the running services renew theirs in place);
#   - a missing one, or one that expired, was revoked, is unknown to the database (a restored
#     dump) or was signed with another key (a new CODESYNC_SECRET_KEY) is replaced, and the
#     credential it belonged to is revoked.
# Re-running it is harmless.
set -eu
codesync migrate
dir=${CODESYNC_TOKEN_DIR:-/run/codesync-tokens}
umask 077
for scope in persistence runner; do
    file="$dir/$scope"
    status=0
    why=$(CODESYNC_LOG_LEVEL=WARNING codesync token --check "$file" --scope "$scope" 2>&1 >/dev/null) || status=$?
    case $status in
        0) continue ;;
        1) ;;  # missing or refused: replace it below
        *) echo "checking the $scope service token failed: $why" >&2; exit "$status" ;;
    esac
    if [ -s "$file" ]; then
        # Ends the old credential's renewal chain too (nothing if it is unknown, revoked or of
        # another scope: a persistence token in the runner's file keeps working for persistence).
        codesync token revoke "$file" --scope "$scope" >/dev/null 2>&1 || true
    fi
    codesync token --scope "$scope" --name compose > "$file.tmp" 2>/dev/null
    mv "$file.tmp" "$file"
    echo "created the $scope service token in $file (${why#codesync: })"
done
