"""``culm serve`` and ``culm token``: the service's commands (the service itself is :mod:`culm.web`).

:func:`register` adds them to an argparse subparsers object; each sets ``func`` to a function that
takes the parsed arguments and returns an exit code (0 done, 2 bad usage, 3 not found).
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import socket
import sys
from typing import Any

from culm.cli.common import (
    DatabaseError,
    NotFound,
    UsageError,
    a_text,
    add_db,
    add_imports,
    an_id,
    broker_url,
    check_sqlite,
    db_url,
    err,
    port_number,
    positive_seconds,
    whole_number,
)
from culm.cli.loading import import_modules, import_names

DEFAULT_DB = "sqlite:///culm.db"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


KEEP_ALIVE_SECONDS = 75  # as nginx's keepalive_timeout: longer than client pools keep idle connections


def _db(args: argparse.Namespace) -> str:
    return db_url(args)


def _is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or a name whose every address is one (``localhost``,
    or an alias of 127.0.0.1 in /etc/hosts)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    addresses = {str(info[4][0]).partition("%")[0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


_byte_count = whole_number(1, "a number of bytes above 0")

# Proxies whose X-Forwarded-For names the client: none unless named. The address it names is the
# one the per-address limits count (bad-token throttle, live streams); uvicorn trusts 127.0.0.1 by
# default, which let any process on this machine (or a tunnel ending on it) name any address it liked.
DEFAULT_TRUSTED_PROXIES = ""


def trusted_proxies(text: str) -> str:
    """An argparse type: addresses and networks (``10.0.0.0/8``) separated by commas, ``*`` (any
    peer), or nothing (no peer is trusted). uvicorn takes a malformed entry for a name no peer
    has, without a word: the proxy would be distrusted, every client one address to the limits."""
    entries = [e.strip() for e in text.split(",") if e.strip()]
    if entries == ["*"]:
        return "*"
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False) if "/" in entry else ipaddress.ip_address(entry)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{entry[:80]!r} is no IP address or network (e.g. 10.0.0.5, 10.0.0.0/8, ::1; or '*' alone, "
                "or '' for none)") from None
    return ",".join(entries)


def _port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (in use, no such address), or None when it can."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"unknown host {host!r}: {exc.strerror}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "the address is already in use (another server listens there); pick another --port"
            return exc.strerror or str(exc)
    return None


def cmd_serve(args: argparse.Namespace) -> int:
    """Start the REST API and console; on the embedded default this process also runs the engine."""
    if args.no_auth and not _is_loopback(args.host):
        print(f"error: --no-auth serves only a loopback address (127.0.0.1, ::1, localhost, or a name of "
              f"one), not {args.host!r}; create a token with `culm token create --role admin` to serve other hosts", file=sys.stderr)
        return 2
    try:
        import uvicorn

        from culm.web import create_app
    except ImportError as exc:
        print(f"error: the web service needs the `web` extra: pip install 'culm[web]' ({exc})", file=sys.stderr)
        return 2
    import culm

    problem = _port_problem(args.host, args.port)
    if problem is not None:
        print(f"error: cannot serve on {args.host}:{args.port}: {problem}", file=sys.stderr)
        return 2
    try:
        import_modules(import_names(args.imports))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    broker = broker_url(args)  # an unknown kind of broker: exit 2, before anything is served
    check_sqlite(_db(args), read_only=False)  # a folder, another program's SQLite file: exit 4, nothing added
    runtime = culm.Runtime(_db(args), broker=broker, **({"prefix": args.prefix} if broker else {}))
    try:
        table = _token_table(runtime)  # memory:// keeps no tokens: one line, before anything is served
        if not args.no_auth:
            from culm.web import TokenStore

            if not any(t.revoked_time is None for t in TokenStore(table).list()):
                db = f" --db {args.db}" if args.db else ""
                print(f"warning: this database has no token yet, so every request will be refused (401): create "
                      f"one with `culm token create --role admin{db}`", file=sys.stderr, flush=True)
        mode = "submits and reads (a broker's workers run the work)" if broker else (
            "runs the engine" if runtime.dispatcher is not None else
            "submits and reads (another process runs this database's engine)")
        auth = "no authentication (loopback only)" if args.no_auth else "bearer tokens required"
        where = f"[{args.host}]" if ":" in args.host else args.host  # an IPv6 address, as a URL writes it
        print(f"culm serve on http://{where}:{args.port}/ for {runtime!r}: {mode}; {auth}", flush=True)
        app = create_app(runtime, auth_enabled=not args.no_auth, max_body=args.max_body, host=args.host,
                         max_previews=args.max_previews)
        # Live-update streams never end by themselves: give them a moment, then close them.
        # An idle connection is kept longer than clients keep theirs (httpx: 5 s, uvicorn's default
        # too): a server closing first races a request sent on it at that moment, which the client
        # sees as "Server disconnected without sending a response" (a storm of REST calls met it).
        # uvicorn.run would swallow Ctrl-C (exit 0); its Server raises it again once shut down, so
        # `culm serve` exits 130 as every culm command does when interrupted.
        from culm.web import counted_protocol

        _more_descriptors()
        uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                      http=counted_protocol(args.trusted_proxies, args.request_timeout, args.answer_timeout),
                                      access_log=False, timeout_graceful_shutdown=3,
                                      proxy_headers=bool(args.trusted_proxies),
                                      forwarded_allow_ips=args.trusted_proxies or None,
                                      timeout_keep_alive=KEEP_ALIVE_SECONDS)).run()
    finally:
        runtime.close()
    return 0


def _more_descriptors() -> None:
    """Raise this process's soft limit of open files to its hard limit (at most 65,536): each
    connection and live stream holds one, and the usual soft limit of 1,024 is soon reached."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65_536 if hard == resource.RLIM_INFINITY else min(hard, 65_536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            pass  # kept as it is: the per-client bound still holds


def _token_store(args: argparse.Namespace, read_only: bool) -> Any:
    import culm
    from culm.web import TokenStore

    check_sqlite(_db(args), read_only)  # listing or revoking in the wrong folder creates no database
    runtime = culm.Runtime(_db(args), workers=0)
    try:
        return runtime, TokenStore(_token_table(runtime))
    except BaseException:
        runtime.close()
        raise


def _token_table(runtime: Any) -> Any:
    """The runtime's token table; a ``memory://`` runtime, which keeps none, is a :class:`DatabaseError`."""
    from culm.errors import InvalidOperationError

    try:
        return runtime.token_table()
    except InvalidOperationError as exc:
        raise DatabaseError(f"{exc}: tokens and the service need a database (sqlite:///culm.db, "
                            "postgresql://user@host/db or mysql://user@host/db)") from None


def cmd_token_create(args: argparse.Namespace) -> int:
    from culm.web import TokenError

    runtime, tokens = _token_store(args, read_only=False)
    with runtime:
        try:
            text, info = tokens.create(args.role, args.name)
        except TokenError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print(text)
    print(f"created {info.role} token {info.id}; the text above is shown only now: keep it", file=sys.stderr)
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    from culm.web import PREFIX, TokenError

    token_id = args.id
    if token_id.startswith(PREFIX) and token_id.count("_") >= 2:
        token_id = token_id.split("_", 2)[1]  # the whole token text was given
    runtime, tokens = _token_store(args, read_only=True)
    with runtime:
        try:
            info = tokens.revoke(token_id)
        except TokenError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 3 if "no token" in str(exc) else 5
    print(f"revoked {info.role} token {info.id}")
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    from datetime import datetime

    try:
        runtime, tokens = _token_store(args, read_only=True)
    except NotFound as missing:  # no file, no token: as `culm list` answers there (exit 0)
        err(f"note: {missing}")
        items = []
    else:
        with runtime:
            items = tokens.list()
    if not items:
        print("no token yet: create one with `culm token create --role viewer|operator|admin`", file=sys.stderr)
    for t in items:
        made = datetime.fromtimestamp(t.created_time).strftime("%Y-%m-%d %H:%M:%S")
        status = "revoked" if t.revoked_time else "active"
        used = datetime.fromtimestamp(t.last_used_time).strftime("%Y-%m-%d %H:%M") if t.last_used_time else "never"
        print(f"{t.id}  {t.role:<8} {status:<7} created {made}  used {used:<16}  {t.name}".rstrip(" "))
    return 0


def register(subparsers: Any) -> None:
    """Add ``serve`` and ``token`` (create, revoke, list) to an argparse subparsers object."""
    from culm.web import ROLES

    serve = subparsers.add_parser("serve", help="REST API and web console")
    add_db(serve)
    serve.add_argument("--broker", metavar="URL", type=a_text("a broker URL"), help="Celery broker URL (default: $CULM_BROKER_URL); "
                       "with one, this service only submits and reads")
    serve.add_argument("--prefix", default=os.environ.get("CULM_QUEUE_PREFIX", "culm"), type=a_text("a queue name prefix"),
                       help="queue name prefix of the workers, with --broker (default: $CULM_QUEUE_PREFIX, "
                            "then culm)")
    add_imports(serve)
    serve.add_argument("--host", default=DEFAULT_HOST, type=a_text("an address"), help=f"address to bind (default {DEFAULT_HOST})")
    serve.add_argument("--port", type=port_number, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    serve.add_argument("--no-auth", action="store_true",
                       help="no tokens needed; binds to loopback only (an address or a name of one)")
    serve.add_argument("--max-body", type=_byte_count, default=4 * 1024 * 1024, metavar="BYTES",
                       help="largest request body accepted (default 4 MiB)")
    serve.add_argument("--max-previews", type=whole_number(1, "a number of previews, 1 or more"), default=4,
                       metavar="N", help="previews rendered at once; more are answered 429 (default 4)")
    serve.add_argument("--trusted-proxies", metavar="ADDRESSES",
                       type=trusted_proxies, default=os.environ.get("CULM_TRUSTED_PROXIES", DEFAULT_TRUSTED_PROXIES),
                       help="peers whose X-Forwarded-For header names the client, as addresses or networks separated "
                            "by commas, e.g. 127.0.0.1 for a proxy on this machine; '' trusts none, '*' any (default: "
                            "$CULM_TRUSTED_PROXIES, then none)")
    serve.add_argument("--request-timeout", type=positive_seconds, default=30.0, metavar="SECONDS",
                       help="time a request's head may take to arrive, from its first byte (its body must then "
                            "come at 1,000 bytes a second or more; a slower one is answered 408), and an answer may "
                            "wait in the server's memory, its client reading under 1,000 bytes a second, before "
                            "the connection is dropped (default 30)")
    serve.add_argument("--answer-timeout", type=positive_seconds, default=300.0, metavar="SECONDS",
                       help="time in all an answer may wait in the server's memory for its client to read it, "
                            "however steadily it reads, before the connection is dropped (default 300: a 4 MB "
                            "answer read at 14 kB a second)")
    serve.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                       help="the web server's log level (default warning)")
    serve.set_defaults(func=cmd_serve)

    token = subparsers.add_parser("token", help="create, revoke and list API tokens of `culm serve`")
    token_sub = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    create = token_sub.add_parser("create", help="create a token and print it (once)")
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--name", default="", help="a note saying whose token it is")
    add_db(create)
    create.set_defaults(func=cmd_token_create)
    revoke = token_sub.add_parser("revoke", help="revoke a token by its id (or its whole text)")
    revoke.add_argument("id", type=an_id, metavar="ID")
    add_db(revoke)
    revoke.set_defaults(func=cmd_token_revoke)
    listing = token_sub.add_parser("list", help="list tokens (never their secrets)")
    add_db(listing)
    listing.set_defaults(func=cmd_token_list)
