"""Command line: ``python -m emulator --tenant FILE [--port N]``. Prints the environment for
the app (KEY=VALUE lines, then ``ready``) and serves until SIGTERM/SIGINT."""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import ssl
import sys
import tempfile
import threading
from pathlib import Path

from .server import App, make_server
from .state import TenantFileError


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m emulator", description=__doc__)
    p.add_argument("--tenant", required=True, help="tenant file (JSON)")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = pick a free one)")
    p.add_argument("--lro-polls", type=int, default=0,
                   help="status polls that report InProgress before Succeeded; meanwhile the cluster refuses other operations (409)")
    p.add_argument("--lro-seconds", type=float, default=0.0,
                   help="wall-clock seconds each principal-assignment create or delete stays InProgress; "
                        "meanwhile the cluster refuses other operations (409)")
    p.add_argument("--lro-retry-after", type=int, default=None, help="send Retry-After (seconds) on long-running operations")
    p.add_argument("--arm-audience", action="append", help="accepted ARM token audience (repeatable)")
    p.add_argument("--graph-audience", action="append", help="accepted Graph token audience (repeatable)")
    return p.parse_args(argv)


def load_tenant(path: str) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TenantFileError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise TenantFileError([f"{path}: not valid JSON: {exc}"]) from None
    if not isinstance(data, dict):
        raise TenantFileError([f"{path}: the top level must be an object"])
    return data


def main(argv=None) -> int:
    args = parse_args(argv if argv is not None else sys.argv[1:])
    try:
        app = App(load_tenant(args.tenant), lro_polls=args.lro_polls, lro_retry_after=args.lro_retry_after,
                  lro_seconds=args.lro_seconds,
                  arm_audiences=args.arm_audience, graph_audiences=args.graph_audience)
    except TenantFileError as exc:
        print(f"emulator: invalid tenant file {args.tenant} ({len(exc.problems)} problem(s)):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2

    import trustme

    workdir = Path(tempfile.mkdtemp(prefix="kusto-emulator-"))
    try:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        ca_file = workdir / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(ctx)
        server = make_server(app, ctx, args.port)
        port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        thread.start()

        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        url = f"https://127.0.0.1:{port}"
        lines = [
            f"ARM_ENDPOINT={url}",
            f"GRAPH_ENDPOINT={url}",
            f"IDENTITY_ENDPOINT={url}/msi/token",
            f"IDENTITY_HEADER={app.identity_header}",
            f"REQUESTS_CA_BUNDLE={ca_file}",
            f"SSL_CERT_FILE={ca_file}",
            f"AZURE_TENANT_ID={app.state.directory.tenant_id}",
            "LOCAL_EMULATOR=true",  # the app accepts loopback ARM/Graph endpoints only with this
            "ready",
        ]
        print("\n".join(lines), flush=True)
        while not stop.wait(0.5):
            pass
        server.shutdown()
        server.server_close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
