# CodeSync images, all from one Debian bookworm base (the release the project is tested on):
#
#   target "app"        signaling, persistence peer, runner, migrations  (compose: codesync:latest)
#   target "proxy"      nginx from Debian in front of the signaling nodes (codesync-proxy:latest)
#   target "turn"       coturn from Debian, the version tests/test_turn.py runs (codesync-turn:latest)
#   target "run-image"  what the runner's Docker sandbox executes user code in (codesync-runner:bookworm):
#                       the packages of runner/run-image.packages (runner/image.py's debootstrap
#                       image installs the same list) and the vendored TypeScript toolchain
#
# The web client is built in its own stage ("web", Node + esbuild) and only its dist/ is copied
# into the app image; the sandbox's TypeScript toolchain likewise ("run-toolchains"). DEBIAN_IMAGE may name a locally imported base (no registry needed):
#   python -m runner.image --rootfs-only   # debootstrap tarball, see runner/image.py
#   docker import <tarball> codesync-base:bookworm
#   docker compose build --build-arg DEBIAN_IMAGE=codesync-base:bookworm   (or set it in .env)
ARG DEBIAN_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------- Node + npm, for the build stages
FROM ${DEBIAN_IMAGE} AS node-tools
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends nodejs npm ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------- web client bundle
FROM node-tools AS web
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web/ ./
RUN npm run build && test -f dist/index.html

# ---------------------------------------------------------------- Python services
FROM ${DEBIAN_IMAGE} AS app
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends python3 python3-venv ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
WORKDIR /app
# Dependencies first (cached while only the sources change): install against stub packages,
# editable, so the real sources copied below are what runs. One stub and one COPY per package
# of pyproject.toml's [tool.setuptools.packages.find] (tests/test_deploy_compose.py checks).
# The dependency set is the hashed lock (requirements-run.lock, `make lock`); CodeSync itself
# resolves nothing more (--no-deps).
COPY pyproject.toml README.md requirements-run.lock ./
RUN mkdir -p codesync signaling peer runner \
 && touch codesync/__init__.py signaling/__init__.py peer/__init__.py runner/__init__.py \
 && pip install --require-hashes -r requirements-run.lock \
 && pip install --no-deps -e . \
 && rm -rf codesync signaling peer runner
COPY codesync/ codesync/
COPY signaling/ signaling/
COPY peer/ peer/
COPY runner/ runner/
COPY deploy/bootstrap.sh deploy/with-service-token.sh deploy/
COPY --from=web /src/web/dist/ web/dist/
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin codesync \
 && mkdir -p /data /run/codesync-tokens \
 && chown codesync /data /run/codesync-tokens \
 && chmod 0700 /data /run/codesync-tokens
USER codesync
ENV CODESYNC_HOST=0.0.0.0 \
    CODESYNC_PORT=8000 \
    CODESYNC_DATA_DIR=/data \
    CODESYNC_WEB_DIST=/app/web/dist \
    CODESYNC_LOG_JSON=true
EXPOSE 8000 9100
# tini: signals reach codesync (graceful shutdown) and zombies are reaped.
ENTRYPOINT ["tini", "--", "codesync"]
CMD ["signaling"]

# ---------------------------------------------------------------- reverse proxy (nginx)
# Debian's nginx, the version tests/test_deploy_proxy.py drives; deploy/nginx.conf is mounted.
FROM ${DEBIAN_IMAGE} AS proxy
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends nginx curl \
 && rm -rf /var/lib/apt/lists/* \
 && ln -sf /dev/stderr /var/log/nginx/error.log
COPY deploy/nginx.conf /etc/nginx/nginx.conf
EXPOSE 80
STOPSIGNAL SIGQUIT
ENTRYPOINT ["nginx", "-g", "daemon off;"]

# ---------------------------------------------------------------- TURN (coturn)
FROM ${DEBIAN_IMAGE} AS turn
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends coturn tini \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/turn && chown turnserver /var/lib/turn
COPY deploy/turnserver.conf /etc/coturn/turnserver.conf
USER turnserver
EXPOSE 3478/udp 3478/tcp
# tini: coturn installs no SIGTERM handler, and as PID 1 a signal without a handler is ignored —
# `docker compose stop` waited out the grace period and SIGKILLed it (exit 137). Under tini the
# default action ends it at once; -e 143 reports that (128 + SIGTERM) as a clean exit.
ENTRYPOINT ["tini", "-e", "143", "--", "turnserver", "-c", "/etc/coturn/turnserver.conf", "--userdb=/var/lib/turn/turndb", "--pidfile=/var/lib/turn/turnserver.pid"]

# ---------------------------------------------------------------- sandbox image for the runner
# The vendored npm toolchains (runner/toolchains/*: TypeScript and Node's types, pinned by their
# lockfiles), installed as runner/image.py installs them; copied into the run image below.
FROM node-tools AS run-toolchains
COPY runner/toolchains/ /src/toolchains/
RUN set -e; for lock in /src/toolchains/*/package-lock.json; do \
      (cd "$(dirname "$lock")" && npm ci --no-audit --no-fund --ignore-scripts --omit=dev); \
    done \
 && find /src/toolchains \( -name .gitignore -o -name .package-lock.json \) -delete

# Exactly runner/image.py's debootstrap image, for hosts that can pull a base image: the
# packages of runner/run-image.packages, the same paths pruned (runner/run-image.prune), the
# toolchains at /opt/codesync (runner.image.SANDBOX_TOOLCHAINS, where bubblewrap binds them).
FROM ${DEBIAN_IMAGE} AS run-image
ENV DEBIAN_FRONTEND=noninteractive
COPY runner/run-image.packages runner/run-image.prune /tmp/
RUN apt-get update -q \
 && sed 's/#.*//' /tmp/run-image.packages | xargs apt-get install -y -q --no-install-recommends \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* \
 && cd / && for path in $(sed 's/#.*//' /tmp/run-image.prune); do rm -rf $path; done \
 && rm /tmp/run-image.packages /tmp/run-image.prune
COPY --from=run-toolchains /src/toolchains/ /opt/codesync/
