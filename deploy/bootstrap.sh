#!/bin/sh
# compose service "migrate" (one-shot): apply database migrations, then create the service
# tokens of the persistence peer and the runner once, into the shared "service-tokens" volume
# (mode 0600, owned by the codesync user). Re-running it is harmless.
set -eu
codesync migrate
dir=${CODESYNC_TOKEN_DIR:-/run/codesync-tokens}
umask 077
for scope in persistence runner; do
    if [ ! -s "$dir/$scope" ]; then
        codesync token --scope "$scope" --name compose > "$dir/$scope.tmp"
        mv "$dir/$scope.tmp" "$dir/$scope"
        echo "created the $scope service token in $dir/$scope"
    fi
done
