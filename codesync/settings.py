"""The one settings object every CodeSync process reads.

Names are a contract (see DESIGN.md, "Command line and configuration"): deployments set
``CODESYNC_*`` environment variables (or a ``.env`` file) and every service — signaling,
persistence peer, runner — reads the same object, so one ``.env`` configures a whole stack.
"""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class OAuthProvider(BaseModel):
    """One OAuth / OpenID Connect provider assembled from ``CODESYNC_OAUTH_<NAME>_*``."""

    name: str
    client_id: str
    client_secret: str = ""
    issuer: str | None = None  # OIDC discovery base; None for GitHub (plain OAuth 2)
    # Extensions (``_AUTHORIZE_URL``, ``_TOKEN_URL``, ``_API_URL``, ``_LABEL``): GitHub's endpoints
    # can point elsewhere (GitHub Enterprise, the tests' local provider); a label for buttons.
    authorize_url: str | None = None
    token_url: str | None = None
    api_url: str | None = None
    label: str | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CODESYNC_", env_file=".env", extra="ignore", populate_by_name=True
    )

    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = None
    data_dir: Path = Path("./data")
    database_url: str | None = None
    redis_url: str | None = None
    redis_prefix: str = "codesync"  # extension: key and channel prefix, so deployments can share a Redis
    secret_key: str | None = None

    signaling_url: str | None = None
    service_token: str | None = None

    ice_hosts: str | None = None
    stun_urls: str | None = None
    turn_urls: str | None = None
    turn_secret: str | None = None
    turn_ttl: int = 3600

    sandbox: Literal["bubblewrap", "docker"] = "bubblewrap"

    # Extensions (not in the original contract, all optional).
    access_token_ttl: int = Field(default=900, description="seconds")
    refresh_token_ttl: int = Field(default=30 * 24 * 3600, description="seconds")
    invite_ttl: int = Field(default=7 * 24 * 3600, description="seconds")
    # Login throttling (signaling.ratelimit). Per account *and* source address: a few free
    # failures, then delays that double with every further failure (capped), so an attacker
    # slows down exponentially but can never lock the owner out from another address. Per
    # source address: a cap on all attempts in the window. Per account (all sources): past
    # that many attempts in the window, addresses that failed get no free failures any more.
    login_free_failures: int = 5
    login_delay_base: float = Field(default=1.0, description="seconds; the first delay")
    login_delay_max: float = Field(default=900.0, description="seconds; delays double up to this")
    login_attempts_per_account: int = 10
    login_attempts_per_ip: int = 60
    login_window: int = Field(default=300, description="seconds")
    # Reverse proxies whose X-Forwarded-For is believed (comma-separated addresses or CIDRs);
    # the client is the rightmost address in the header that is not one of them. Unset: the
    # TCP peer is the client and X-Forwarded-For is ignored.
    trusted_proxies: str | None = None
    # Service tokens (persistence, runner): lifetime of the tokens `codesync up` mints and of
    # those a service gets in exchange for its current one (POST /api/service/token).
    service_token_ttl: int = Field(default=24 * 3600, description="seconds")
    # A service peer writes each renewed token here (compose: the file its token came from).
    service_token_file: Path | None = None

    @field_validator("service_token_file", mode="before")
    @classmethod
    def _no_file_when_empty(cls, value: object) -> object:
        """An empty value means "no file" (``codesync up`` masks it that way), not ``Path(".")``."""
        return None if value == "" else value
    # How often each signaling node re-checks the sessions / service tokens of its open /signal
    # sockets against the database (the safety net behind the revocation events).
    session_recheck: float = Field(default=15.0, description="seconds")
    # Accounts (signaling/accounts.py, docs/accounts.md). Mail: an SMTP server URL
    # (smtp://user:pass@host:587 — STARTTLS when offered; smtp+starttls:// requires it;
    # smtps://host:465 implicit TLS) and the sender. Without a URL, mails are written to the
    # log (clearly marked) instead of being sent.
    smtp_url: str | None = None
    smtp_timeout: float = Field(default=15.0, description="seconds per SMTP conversation")
    mail_from: str | None = None  # default: "CodeSync <codesync@<public host>>"
    email_verify_ttl: int = Field(default=48 * 3600, description="seconds a verification link is valid")
    password_reset_ttl: int = Field(default=3600, description="seconds a password-reset link is valid")
    # What an account whose email is not verified may do: "blocked" (nothing: it cannot sign
    # in until verified), "limited" (sign in and edit, but not mint invites), "full".
    unverified_accounts: Literal["blocked", "limited", "full"] = "limited"
    # Who may create an account: "open" (anyone), "invite" (with a room invite or an admin's
    # signup invite), "domain" (addresses at CODESYNC_REGISTRATION_DOMAINS, or an admin's
    # invite), "closed" (only administrators make accounts: CLI or admin invite).
    registration: Literal["open", "invite", "domain", "closed"] = "open"
    registration_domains: str | None = None
    # Accounts that are server administrators once their email is verified (comma-separated).
    admin_emails: str | None = None
    # Emailed links (reset, verification re-sends, email changes): per account and per source
    # address in each window; the answer never says whether the address has an account.
    mail_per_account: int = 3
    mail_per_ip: int = 20
    mail_window: int = Field(default=3600, description="seconds")
    # The admin page's "runs in progress": /metrics URLs of runners (and persistence peers) to
    # read, comma-separated (`codesync up` fills it in when CODESYNC_OPS_PORT is set).
    admin_metrics_urls: str | None = None
    # Serve /metrics on the public port too. Off: only on CODESYNC_OPS_PORT (never via the proxy).
    public_metrics: bool = False
    log_json: bool = False
    log_level: str = "INFO"
    web_dist: Path | None = None
    # /healthz + /metrics of the persistence peer and the runner (codesync/opsserver.py); unset = off.
    ops_port: int | None = None
    ops_host: str | None = None  # default: host
    # Persistence peer (peer/persistence): room lease lifetime (renewed every third of it), how
    # long it stays in a room after room-idle, and when the update log is compacted.
    persist_lease_ttl: float = Field(default=10.0, description="seconds")
    persist_idle_grace: float = Field(default=30.0, description="seconds")
    persist_compact_rows: int = 200
    # History (docs/history.md): days of full detail kept (0 = every update forever; N = older
    # updates become one snapshot per day), and whether viewers may read a room's history
    # when its owner has not decided (per-room policy).
    persist_history_days: int = Field(default=0, ge=0)
    persist_history_viewers: bool = False
    # Runner (runner/): a JSON file extending the languages table, the Docker engine URL
    # (default: DOCKER_HOST / the local socket) and run image, per-run limits, idle grace.
    runner_languages: Path | None = None
    runner_docker_url: str | None = None
    runner_image: str = "codesync-runner:bookworm"
    runner_wall_seconds: float = Field(default=10.0, description="seconds per run")
    runner_cpu_seconds: int = 5
    runner_memory_mb: int = 256
    runner_processes: int = 64
    runner_output_kb: int = 64
    runner_idle_grace: float = Field(default=30.0, description="seconds in a room after room-idle")
    # Sandbox hardening: refuse runs when the per-run cgroup (memory, pids, cpu) cannot be made
    # (false = run with rlimits only, e.g. bubblewrap as an unprivileged user; weaker), where the
    # cgroup hierarchies are mounted (bubblewrap), the cgroup parent of run containers (docker).
    runner_require_cgroups: bool = True
    runner_cgroup_root: Path = Path("/sys/fs/cgroup")
    runner_cgroup_parent: str | None = None
    # Capacity (runner/capacity.py), per runner process: sandboxes at once, sandboxes per user
    # (across all rooms), runs admitted to wait for a sandbox in all, and per user.
    runner_max_concurrent: int = Field(default=8, ge=1)
    runner_max_per_user: int = Field(default=2, ge=1)
    runner_max_queued: int = Field(default=64, ge=0)
    runner_max_queued_per_user: int = Field(default=4, ge=0)
    # This runner's id, stable across its restarts (default: the hostname): scopes the Docker
    # leftovers it removes at start and the stale runs it fails (runner/identity.py).
    runner_instance: str | None = None
    # /signal WebSocket (signaling/ws): presence expiry, keepalive and per-connection limits.
    presence_ttl: float = Field(default=15.0, description="seconds a node's presence outlives its last heartbeat")
    signal_heartbeat: float = Field(default=20.0, description="seconds between WebSocket pings")
    signal_max_frame: int = Field(default=64 * 1024, description="bytes per incoming frame")
    signal_max_topics: int = 32
    signal_service_max_topics: int = Field(default=10000, description="rooms one service connection may join")
    signal_service_rate: float = Field(default=5000.0, description="frames per second per service connection")
    signal_service_send_queue: int = Field(default=65536, description="frames buffered for a service connection")
    signal_rate: float = Field(default=100.0, description="frames per second per connection (burst: 2x)")
    signal_max_conns_per_user: int = 20
    signal_send_queue: int = Field(default=1024, description="frames buffered for a slow reader before it is dropped")
    signal_max_strikes: int = Field(default=10, description="bad frames tolerated before closing with 1008")
    signal_peer_id_grace: float = Field(
        default=60.0, description="seconds a peer id stays reserved to its user (or service) after its connection closed"
    )

    # ------------------------------------------------------------------ derived
    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def effective_database_url(self) -> str:
        """SQLAlchemy async URL; plain ``postgresql://`` and ``sqlite://`` are upgraded."""
        url = self.database_url or f"sqlite+aiosqlite:///{(self.data_dir / 'codesync.db').resolve()}"
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://") :]
        if url.startswith("postgresql://"):
            url = "postgresql+asyncpg://" + url[len("postgresql://") :]
        elif url.startswith("sqlite://") and not url.startswith("sqlite+aiosqlite://"):
            url = "sqlite+aiosqlite://" + url[len("sqlite://") :]
        return url

    @property
    def effective_secret_key(self) -> str:
        """The signing key; generated once into the data dir (0600) when not configured."""
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret_key"
        if not path.exists():
            ensure_private_dir(self.data_dir)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process made it first: read theirs
                pass
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_urlsafe(48))
        make_private(path)
        key = path.read_text().strip()
        object.__setattr__(self, "secret_key", key)
        return key

    @property
    def trusted_proxy_list(self) -> list[str]:
        return _split(self.trusted_proxies)

    @property
    def registration_domain_list(self) -> list[str]:
        return [d.lower().lstrip("@") for d in _split(self.registration_domains)]

    @property
    def admin_email_list(self) -> list[str]:
        return [e.lower() for e in _split(self.admin_emails)]

    @property
    def admin_metrics_url_list(self) -> list[str]:
        return _split(self.admin_metrics_urls)

    @property
    def mail_sender(self) -> str:
        if self.mail_from:
            return self.mail_from
        from urllib.parse import urlsplit

        host = urlsplit(self.base_url).hostname or "localhost"
        return f"CodeSync <codesync@{host}>"

    @property
    def ice_host_list(self) -> list[str]:
        return _split(self.ice_hosts)

    @property
    def stun_url_list(self) -> list[str]:
        return _split(self.stun_urls)

    @property
    def turn_url_list(self) -> list[str]:
        return _split(self.turn_urls)

    @property
    def http_signaling_url(self) -> str:
        """Base HTTP URL of the signaling server, for peers started on their own."""
        return (self.signaling_url or self.base_url).rstrip("/").replace("ws://", "http://").replace(
            "wss://", "https://"
        ).removesuffix("/signal")

    def oauth_providers(self) -> dict[str, OAuthProvider]:
        """Providers from ``CODESYNC_OAUTH_<NAME>_CLIENT_ID`` (+ ``_CLIENT_SECRET``, ``_ISSUER``).

        Google's issuer defaults to accounts.google.com; GitHub has no OIDC discovery.
        """
        # Like the fields above: the environment wins over the ``.env`` file.
        env_file = self.model_config.get("env_file")
        env = {**_dotenv(env_file if isinstance(env_file, str) else None), **os.environ}
        prefix = "CODESYNC_OAUTH_"
        found: dict[str, OAuthProvider] = {}
        for key, value in env.items():
            if key.startswith(prefix) and key.endswith("_CLIENT_ID") and value:
                name = key[len(prefix) : -len("_CLIENT_ID")].lower()
                if not name:
                    continue
                up = name.upper()
                issuer = env.get(f"{prefix}{up}_ISSUER") or None
                if issuer is None and name == "google":
                    issuer = "https://accounts.google.com"
                found[name] = OAuthProvider(
                    name=name,
                    client_id=value,
                    client_secret=env.get(f"{prefix}{up}_CLIENT_SECRET", ""),
                    issuer=issuer,
                    authorize_url=env.get(f"{prefix}{up}_AUTHORIZE_URL") or None,
                    token_url=env.get(f"{prefix}{up}_TOKEN_URL") or None,
                    api_url=env.get(f"{prefix}{up}_API_URL") or None,
                    label=env.get(f"{prefix}{up}_LABEL") or None,
                )
        return found


def ensure_private_dir(path: Path) -> None:
    """Create the data dir as 0700, or tighten an existing one of ours to 0700.

    It holds the SQLite database, the generated signing key and (in older versions) service
    tokens: nobody else on the machine has any business listing or reading it.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    make_private(path, 0o700)


def make_private(path: Path, mode: int = 0o600) -> None:
    """``chmod`` to ``mode`` when group/other have any access; a file we do not own is left alone."""
    try:
        st = path.stat()
        if st.st_mode & 0o077 and st.st_uid == os.geteuid():
            os.chmod(path, mode)
    except OSError:
        pass


def _dotenv(path: str | None) -> dict[str, str]:
    if not path or not Path(path).is_file():
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
