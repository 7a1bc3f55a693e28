"""moto's S3 over HTTPS, closing every connection with a TLS close_notify.

Run by tools/localcloud/s3.py with the venv's python, by path (it imports nothing of the
repository): ``python s3_server.py --host H --port P --cert C --key K``. Not `moto_server`
itself: Werkzeug's server answers every request with `Connection: close` and then shuts the
socket without a TLS close_notify. pgBackRest, told to read a body until the connection ends,
takes that end for a truncated response (`TLS error [1:167772454] unexpected eof while
reading`) and retries every PUT until it gives up; boto3 does not mind either way.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import ssl
import sys
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import ThreadedWSGIServer, load_ssl_context

# How long a finished connection waits for the client's own close_notify.
CLOSE_TIMEOUT_S = 2.0


class CleanCloseServer(ThreadedWSGIServer):
    """Werkzeug's threaded server, ending each TLS connection with a close_notify."""

    def shutdown_request(self, request: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(CLOSE_TIMEOUT_S)
                request = request.unwrap()  # sends close_notify; the plain socket comes back
            except (OSError, ValueError):
                pass  # the client had gone already
        with contextlib.suppress(OSError):
            request.shutdown(socket.SHUT_WR)
        self.close_request(request)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True, help="the server certificate (PEM)")
    parser.add_argument("--key", required=True, help="its private key (PEM)")
    args = parser.parse_args(argv)
    app = DomainDispatcherApplication(create_backend_app)
    context = load_ssl_context(args.cert, args.key)
    server = CleanCloseServer(args.host, args.port, app, MotoRequestHandler, False, context)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"s3: serving https://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
