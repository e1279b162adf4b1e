# CodeSync images, all from one Debian bookworm base (the release the project is tested on):
#
#   target "app"        signaling, persistence peer, runner, migrations  (compose: codesync:latest)
#   target "proxy"      nginx from Debian in front of the signaling nodes (codesync-proxy:latest)
#   target "turn"       coturn from Debian, the version tests/test_turn.py runs (codesync-turn:latest)
#   target "run-image"  what the runner's Docker sandbox executes user code in (codesync-runner:bookworm)
#
# The web client is built in its own stage ("web", Node + esbuild) and only its dist/ is copied
# into the app image. DEBIAN_IMAGE may name a locally imported base (no registry needed):
#   python -m runner.image --rootfs-only   # debootstrap tarball, see runner/image.py
#   docker import <tarball> codesync-base:bookworm
#   docker compose build --build-arg DEBIAN_IMAGE=codesync-base:bookworm   (or set it in .env)
ARG DEBIAN_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------- web client bundle
FROM ${DEBIAN_IMAGE} AS web
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends nodejs npm ca-certificates \
 && rm -rf /var/lib/apt/lists/*
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
# editable, so the real sources copied below are what runs.
COPY pyproject.toml README.md ./
RUN mkdir -p signaling peer runner \
 && touch signaling/__init__.py peer/__init__.py runner/__init__.py \
 && pip install -e . \
 && rm -rf signaling peer runner
COPY signaling/ signaling/
COPY peer/ peer/
COPY runner/ runner/
COPY deploy/bootstrap.sh deploy/with-service-token.sh deploy/
COPY --from=web /src/web/dist/ web/dist/
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin codesync \
 && mkdir -p /data /run/codesync-tokens \
 && chown codesync /data /run/codesync-tokens \
 && chmod 0700 /run/codesync-tokens
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
# The same packages as runner/image.py's debootstrap image, for hosts that can pull a base image.
FROM ${DEBIAN_IMAGE} AS run-image
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends python3 nodejs gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man
