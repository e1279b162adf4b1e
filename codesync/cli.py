"""``codesync`` — the command line (a contract: see DESIGN.md, "Command line and configuration").

``codesync up`` runs the whole local stack as one process group: the signaling server (with
the web client), the persistence peer and the runner, each its own process so that one crash
does not take the others down; a crashed service is restarted.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone

from .logs import setup_logging
from .settings import Settings, get_settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="codesync", description="CodeSync collaborative code editor")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run the whole local stack (signaling + web, persistence peer, runner)")
    sub.add_parser("signaling", help="run the signaling server (REST API, /signal, web client)")
    sub.add_parser("persist", help="run the persistence peer")
    sub.add_parser("runner", help="run the code runner peer")
    sub.add_parser("migrate", help="apply database migrations and exit")
    tok = sub.add_parser(
        "token",
        help="service tokens: print a new one (--scope), list them, revoke one or a scope",
        description="codesync token --scope persistence|runner [--name N] [--ttl S]  |  codesync token list  |  "
        "codesync token revoke ID_OR_TOKEN [--scope S: only if of that scope]  |  codesync token revoke --scope persistence|runner  |  "
        "codesync token --check FILE_OR_TOKEN [--scope S]",
    )
    tok.add_argument("action", nargs="?", choices=["create", "list", "revoke"], default="create")
    tok.add_argument("target", nargs="?",
                     help="revoke: the token's id (see `codesync token list`), the token, or a file holding it (a path with a /)")
    tok.add_argument("--scope", choices=["persistence", "runner"])
    tok.add_argument("--name", default="", help="a label for the token")
    tok.add_argument("--ttl", type=int, default=None,
                     help="seconds the printed token is valid (default 30 days; the service renews it while running)")
    tok.add_argument("--check", metavar="FILE_OR_TOKEN",
                     help="exit 0 if this service token (or the token in this file: a path with a /) is accepted now "
                     "(of --scope, if given); 1 if it is missing, expired, revoked, unknown or forged")
    user = sub.add_parser("user", help="manage accounts")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    create = user_sub.add_parser("create", help="create an email + password account")
    create.add_argument("email")
    create.add_argument("--name", default=None)
    create.add_argument("--password", default=None, help="default: $CODESYNC_PASSWORD or a prompt")
    create.add_argument("--admin", action="store_true", help="make the account a server administrator")

    args = parser.parse_args(argv)
    settings = get_settings()
    setup_logging(settings.log_level, settings.log_json, service=args.command)
    try:
        if args.command == "up":
            return _up(settings)
        if args.command == "signaling":
            from signaling.server import run_signaling

            return asyncio.run(run_signaling(settings))
        if args.command == "persist":
            from peer.persistence.service import run_persistence

            return asyncio.run(run_persistence(settings))
        if args.command == "runner":
            from runner.service import run_runner

            return asyncio.run(run_runner(settings))
        if args.command == "migrate":
            from signaling import admin

            asyncio.run(admin.migrate_only(settings))
            return 0
        if args.command == "token":
            return _token(settings, args)
        if args.command == "user" and args.user_command == "create":
            from signaling import admin

            password = args.password or os.environ.get("CODESYNC_PASSWORD") or _read_password()
            user_id = asyncio.run(admin.create_user(settings, args.email, args.name, password, is_admin=args.admin))
            print(user_id)
            return 0
    except KeyboardInterrupt:
        return 130
    except admin_errors() as exc:  # clear message, no traceback
        print(f"codesync: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    return 1


def _read_password() -> str:
    """The new account's password: prompted on a terminal, else one line of standard input
    (``printf '%s\\n' "$PW" | codesync user create ...``); nothing there is a clear error."""
    from signaling.admin import AdminError

    missing = ("no password: pass --password, set CODESYNC_PASSWORD, pipe it on standard input, "
               "or run this in a terminal")
    stdin = sys.stdin
    try:
        if stdin is not None and stdin.isatty():
            return getpass.getpass("Password: ")
        line = stdin.readline() if stdin is not None else ""
    except EOFError:
        raise AdminError(missing) from None
    except (OSError, ValueError):  # stdin closed
        raise AdminError(missing) from None
    if not line:
        raise AdminError(missing)
    return line.rstrip("\r\n")


def _token(settings: Settings, args: argparse.Namespace) -> int:
    from signaling import admin

    if args.check is not None:
        if args.target is not None or args.action != "create" or args.name or args.ttl is not None:
            raise admin.AdminError("usage: codesync token --check FILE_OR_TOKEN [--scope persistence|runner]")
        token = admin.read_token_argument(args.check)
        found = asyncio.run(admin.check_service_token(settings, token, args.scope))
        left = found.expires_at - datetime.now(timezone.utc)
        print(f"valid {found.scope} service token {found.id}, expires {found.expires_at:%Y-%m-%d %H:%M} UTC "
              f"(in {_duration(left.total_seconds())})")
        return 0
    if args.action == "create":
        if args.scope is None or args.target is not None:
            raise admin.AdminError("usage: codesync token --scope persistence|runner [--name N] [--ttl SECONDS]")
        token = asyncio.run(admin.create_service_token(settings, args.scope, args.name, args.ttl))
        print(token)  # stdout: the token alone (scripts capture it); its id goes to stderr
        token_id = admin.token_id_of(token)
        print(f"service token id {token_id} (revoke: codesync token revoke {token_id})", file=sys.stderr)
        return 0
    if args.action == "list":
        for info in asyncio.run(admin.list_service_tokens(settings)):
            state = f"revoked {info.revoked_at:%Y-%m-%d %H:%M}" if info.revoked_at else "active"
            print(f"{info.id}  {info.scope:<11}  {info.created_at:%Y-%m-%d %H:%M}  {state:<24}  {info.name}")
        return 0
    target = None if args.target is None else admin.read_token_argument(args.target)
    revoked = asyncio.run(admin.revoke_service_tokens(settings, token=target, scope=args.scope))
    what = "that token" if target else f"scope {args.scope}"
    print(f"revoked {len(revoked)} service token(s) of {what}" + (f": {', '.join(revoked)}" if revoked else ""))
    return 0


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.0f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.0f} hours"
    return f"{max(seconds, 0) / 60:.0f} minutes"


def admin_errors() -> tuple[type[BaseException], ...]:
    from signaling.admin import AdminError

    return (AdminError,)


def _up(settings: Settings) -> int:
    from .supervisor import run_stack

    return asyncio.run(run_stack(settings))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
