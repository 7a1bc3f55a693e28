"""The local cloud's S3 endpoint: moto's S3 over HTTPS on the bridge address (GATEWAY:S3_PORT).

It stands in for the cloud's object storage (pgBackRest's repository, Airflow's task logs). Its
certificate is signed by a CA of its own, made with openssl on first use and kept with the
server's key in S3_DIR; the deploy hands the CA to the nodes (objectStorage.caCertificate).
moto keeps the buckets in its process (memory, and temporary files for large objects): a
stopped endpoint has lost them, and the next start makes the bucket again, empty.

The server (s3_server.py) runs on the repository's venv python; this module needs only the
standard library, like the rest of tools.localcloud on the host's python3.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import os
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .machines import GATEWAY, S3_BUCKET, S3_DIR, S3_PORT
from .util import LocalCloudError, log, run, wait_until

REPO = Path(__file__).resolve().parents[2]
SERVER_SCRIPT = Path(__file__).with_name("s3_server.py")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
CERT_DAYS = 3650


@dataclass(frozen=True)
class Endpoint:
    """Where one S3 endpoint listens and keeps its files."""

    directory: Path = S3_DIR
    host: str = GATEWAY
    port: int = S3_PORT

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def key(self) -> Path:
        return self.directory / "server.key"

    @property
    def pid_file(self) -> Path:
        return self.directory / "server.pid"

    @property
    def log(self) -> Path:
        return self.directory / "server.log"

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"


# ---------------------------------------------------------------- certificates


def server_extensions(host: str) -> str:
    """The server certificate's extensions: `host` as an IP and, for pgBackRest, as a DNS name
    too (2.45 matches only DNS entries of subjectAltName against the host it connects to, even
    an IP address; Python's ssl and curl match an IP against the IP entry)."""
    names = [f"DNS:{host}"]
    with contextlib.suppress(ValueError):
        names.insert(0, f"IP:{ipaddress.ip_address(host)}")
    return (
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName={','.join(names)}\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )


def _new_key(path: Path) -> None:
    path.unlink(missing_ok=True)
    run(
        [
            "openssl",
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            str(path),
        ]
    )
    os.chmod(path, 0o600)


def _serial() -> str:
    return "0x" + os.urandom(16).hex()


def _make_ca(endpoint: Endpoint) -> None:
    _new_key(endpoint.ca_key)
    run(
        [
            "openssl",
            "req",
            "-x509",
            "-new",
            "-key",
            str(endpoint.ca_key),
            "-sha256",
            "-days",
            str(CERT_DAYS),
            "-set_serial",
            _serial(),
            "-subj",
            "/CN=airflow-ha localcloud S3 CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-addext",
            "subjectKeyIdentifier=hash",
            "-out",
            str(endpoint.ca),
        ]
    )
    os.chmod(endpoint.ca, 0o644)


def _make_server_cert(endpoint: Endpoint) -> None:
    _new_key(endpoint.key)
    request, extensions = endpoint.directory / "server.csr", endpoint.directory / "server.ext"
    extensions.write_text(server_extensions(endpoint.host), encoding="ascii")
    try:
        run(
            [
                "openssl",
                "req",
                "-new",
                "-key",
                str(endpoint.key),
                "-subj",
                f"/CN={endpoint.host}",
                "-out",
                str(request),
            ]
        )
        run(
            [
                "openssl",
                "x509",
                "-req",
                "-in",
                str(request),
                "-CA",
                str(endpoint.ca),
                "-CAkey",
                str(endpoint.ca_key),
                "-set_serial",
                _serial(),
                "-sha256",
                "-days",
                str(CERT_DAYS),
                "-extfile",
                str(extensions),
                "-out",
                str(endpoint.cert),
            ]
        )
    finally:
        request.unlink(missing_ok=True)
        extensions.unlink(missing_ok=True)
    os.chmod(endpoint.cert, 0o644)


def ensure_certificates(endpoint: Endpoint) -> list[str]:
    """Make what is missing of the CA and the server certificate (nothing else is replaced:
    the deployed nodes trust this CA); return what was made. The directory is 0700, the
    keys 0600."""
    endpoint.directory.mkdir(parents=True, exist_ok=True)
    os.chmod(endpoint.directory, 0o700)
    made = []
    old_umask = os.umask(0o077)  # openssl's key files are never readable by others
    try:
        if not (endpoint.ca.exists() and endpoint.ca_key.exists()):
            _make_ca(endpoint)
            made.append("CA")
        if made or not (endpoint.cert.exists() and endpoint.key.exists()):
            _make_server_cert(endpoint)
            made.append(f"server certificate for {endpoint.host}")
    finally:
        os.umask(old_umask)
    return made


# ---------------------------------------------------------------- the server process


def server_python() -> str:
    """The python that has moto: the repository's venv, else this one if it has it."""
    venv = REPO / ".venv" / "bin" / "python"
    if venv.exists():
        return str(venv)
    if importlib.util.find_spec("moto") is not None:
        return sys.executable
    raise LocalCloudError(f"no {venv} with moto for the S3 endpoint: run `make setup`")


def _read_pid(endpoint: Endpoint) -> int | None:
    try:
        return int(endpoint.pid_file.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def server_pid(endpoint: Endpoint) -> int | None:
    """The pid of this endpoint's running server (its pid file names a live s3_server.py)."""
    pid = _read_pid(endpoint)
    if pid is None:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return pid if SERVER_SCRIPT.name.encode() in b" ".join(cmdline) else None


def ssl_context(endpoint: Endpoint) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(endpoint.ca))


def request(endpoint: Endpoint, method: str, path: str = "/", timeout: float = 5) -> int:
    """One unsigned request (moto checks no signature), the CA verified; its status code."""
    req = urllib.request.Request(
        endpoint.url + path, method=method, data=b"" if method == "PUT" else None
    )
    opener = urllib.request.build_opener(  # straight to it, whatever proxy the host has
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ssl_context(endpoint))
    )
    try:
        with opener.open(req, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def answers(endpoint: Endpoint) -> bool:
    """The endpoint lists its buckets over TLS that its CA verifies."""
    try:
        return request(endpoint, "GET", timeout=3) == 200
    except (OSError, ssl.SSLError):
        return False


def _log_tail(endpoint: Endpoint, lines: int = 15) -> str:
    try:
        text = endpoint.log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def start(endpoint: Endpoint, python: str | None = None) -> int:
    """Start the server, detached, and wait until it answers; its pid."""
    argv = [
        python or server_python(),
        str(SERVER_SCRIPT),
        "--host",
        endpoint.host,
        "--port",
        str(endpoint.port),
        "--cert",
        str(endpoint.cert),
        "--key",
        str(endpoint.key),
    ]
    with open(endpoint.log, "w", encoding="utf-8") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd="/",
        )
    endpoint.pid_file.write_text(f"{process.pid}\n", encoding="ascii")
    if not wait_until(lambda: process.poll() is not None or answers(endpoint), START_TIMEOUT):
        stop(endpoint)
        raise LocalCloudError(
            f"S3 endpoint: no answer at {endpoint.url} after "
            f"{START_TIMEOUT:.0f}s; its log:\n{_log_tail(endpoint)}"
        )
    if process.poll() is not None:
        endpoint.pid_file.unlink(missing_ok=True)
        raise LocalCloudError(
            f"S3 endpoint: the server exited with status {process.returncode}"
            f"; its log ({endpoint.log}):\n{_log_tail(endpoint)}"
        )
    return process.pid


def stop(endpoint: Endpoint) -> bool:
    """Stop the server (SIGTERM, then SIGKILL); whether one was running."""
    pid = server_pid(endpoint)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not wait_until(lambda: server_pid(endpoint) is None, STOP_TIMEOUT, 0.2):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_until(lambda: server_pid(endpoint) is None, 5, 0.2)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # ours when started by this very process (tests)
    endpoint.pid_file.unlink(missing_ok=True)
    return pid is not None


def ensure_bucket(endpoint: Endpoint, bucket: str = S3_BUCKET) -> bool:
    """Create `bucket` unless it exists; whether it was created."""
    status = request(endpoint, "HEAD", f"/{bucket}")
    if status == 200:
        return False
    created = request(endpoint, "PUT", f"/{bucket}")
    if created != 200:
        raise LocalCloudError(f"S3 endpoint: creating bucket {bucket} answered HTTP {created}")
    return True


def up(
    endpoint: Endpoint | None = None, bucket: str = S3_BUCKET, python: str | None = None
) -> None:
    """The endpoint running with its bucket: certificates made if missing, the server started
    unless one already answers, the bucket created if missing."""
    endpoint = endpoint or Endpoint()
    for made in ensure_certificates(endpoint):
        log(f"s3: made the {made} in {endpoint.directory}")
    pid = server_pid(endpoint)
    if pid is not None and answers(endpoint):
        state = f"already running (pid {pid})"
    else:
        stop(endpoint)  # a server that does not answer
        pid = start(endpoint, python)
        state = f"started (pid {pid}, log {endpoint.log})"
    created = ensure_bucket(endpoint, bucket)
    log(
        f"s3: {endpoint.url} {state}; bucket {bucket} {'created' if created else 'present'}; "
        f"CA {endpoint.ca}"
    )


def down(endpoint: Endpoint | None = None) -> None:
    endpoint = endpoint or Endpoint()
    if stop(endpoint):
        log(f"s3: {endpoint.url} stopped (its buckets are gone: moto keeps them in memory)")


def status(endpoint: Endpoint | None = None) -> str:
    """One line: the endpoint's state, its bucket and where its CA and log are."""
    endpoint = endpoint or Endpoint()
    pid = server_pid(endpoint)
    if pid is None:
        state = "stopped"
    elif not answers(endpoint):
        state = f"NOT ANSWERING (pid {pid})"
    else:
        bucket = "present" if request(endpoint, "HEAD", f"/{S3_BUCKET}") == 200 else "MISSING"
        state = f"running (pid {pid}), bucket {S3_BUCKET} {bucket}"
    ca = endpoint.ca if endpoint.ca.exists() else "none yet"
    return f"s3 {endpoint.url}: {state}; CA {ca}; log {endpoint.log}"
