"""The local cloud's S3 endpoint (tools/localcloud/s3.py): its CA and certificate, made once,
and a real server on a loopback port that boto3 talks to with the CA verified."""

from __future__ import annotations

import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools.localcloud import s3

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl here")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _text(cert: Path) -> str:
    argv = ["openssl", "x509", "-in", str(cert), "-noout", "-text"]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def test_the_ca_and_certificate_are_made_once_private_and_for_the_address(tmp_path) -> None:
    endpoint = s3.Endpoint(tmp_path / "s3", "172.31.77.1", 9000)
    assert s3.ensure_certificates(endpoint) == ["CA", "server certificate for 172.31.77.1"]
    assert stat.S_IMODE(endpoint.directory.stat().st_mode) == 0o700
    for key in (endpoint.ca_key, endpoint.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert sorted(p.name for p in endpoint.directory.iterdir()) == [
        "ca.key", "ca.pem", "server.key", "server.pem",
    ]
    text = _text(endpoint.cert)
    # The IP entry for Python's ssl and curl, the DNS entry for pgBackRest (DNS names only).
    assert "IP Address:172.31.77.1, DNS:172.31.77.1" in text
    assert "TLS Web Server Authentication" in text and "CA:FALSE" in text
    assert "CA:TRUE" in _text(endpoint.ca)
    verify = ["openssl", "verify", "-CAfile", str(endpoint.ca), str(endpoint.cert)]
    assert subprocess.run(verify, capture_output=True, text=True).returncode == 0

    before = {p.name: p.read_bytes() for p in endpoint.directory.iterdir()}
    assert s3.ensure_certificates(endpoint) == []  # nothing missing, nothing replaced
    assert {p.name: p.read_bytes() for p in endpoint.directory.iterdir()} == before
    endpoint.cert.unlink()  # the server's certificate again, under the same CA
    assert s3.ensure_certificates(endpoint) == ["server certificate for 172.31.77.1"]
    assert endpoint.ca.read_bytes() == before["ca.pem"]
    assert subprocess.run(verify, capture_output=True, text=True).returncode == 0


def test_a_host_name_gets_only_a_dns_entry() -> None:
    assert "subjectAltName=DNS:s3.example.test\n" in s3.server_extensions("s3.example.test")


def test_the_endpoint_serves_boto3_over_verified_tls(tmp_path) -> None:
    """Started as `up` starts it (on a free loopback port): the bucket once, then put, get,
    list, a multipart upload and delete through boto3 with only the endpoint's CA trusted."""
    boto3 = pytest.importorskip("boto3")
    from botocore.config import Config
    from botocore.exceptions import SSLError

    from tools.localcloud.machines import S3_ACCESS_KEY, S3_BUCKET, S3_REGION, S3_SECRET_KEY

    endpoint = s3.Endpoint(tmp_path / "s3", "127.0.0.1", _free_port())
    began = time.monotonic()
    s3.up(endpoint, python=sys.executable)
    try:
        pid = s3.server_pid(endpoint)
        assert pid is not None and s3.answers(endpoint)
        assert not s3.ensure_bucket(endpoint)  # made by up: present now
        s3.up(endpoint, python=sys.executable)  # running: left alone
        assert s3.server_pid(endpoint) == pid
        assert "running" in s3.status(endpoint) and "present" in s3.status(endpoint)

        def client(**verify):
            return boto3.client(
                "s3", endpoint_url=endpoint.url, region_name=S3_REGION,
                aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=S3_SECRET_KEY,
                config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
                **verify,
            )

        c = client(verify=str(endpoint.ca))
        c.put_object(Bucket=S3_BUCKET, Key="logs/a.txt", Body=b"hello")
        assert c.get_object(Bucket=S3_BUCKET, Key="logs/a.txt")["Body"].read() == b"hello"
        listed = c.list_objects_v2(Bucket=S3_BUCKET, Prefix="logs/")["Contents"]
        assert [o["Key"] for o in listed] == ["logs/a.txt"]
        upload = c.create_multipart_upload(Bucket=S3_BUCKET, Key="big")["UploadId"]
        parts = []
        for number, body in ((1, b"a" * (5 * 1024 * 1024)), (2, b"b" * 1000)):
            etag = c.upload_part(Bucket=S3_BUCKET, Key="big", UploadId=upload,
                                 PartNumber=number, Body=body)["ETag"]
            parts.append({"ETag": etag, "PartNumber": number})
        c.complete_multipart_upload(Bucket=S3_BUCKET, Key="big", UploadId=upload,
                                    MultipartUpload={"Parts": parts})
        assert c.head_object(Bucket=S3_BUCKET, Key="big")["ContentLength"] == 5 * 1024 * 1024 + 1000
        c.delete_object(Bucket=S3_BUCKET, Key="big")
        c.delete_object(Bucket=S3_BUCKET, Key="logs/a.txt")
        assert c.list_objects_v2(Bucket=S3_BUCKET)["KeyCount"] == 0
        with pytest.raises(SSLError):  # the system's CAs do not know it
            client(verify=True).list_buckets()
    finally:
        s3.down(endpoint)
    assert s3.server_pid(endpoint) is None and not s3.answers(endpoint)
    assert "stopped" in s3.status(endpoint)
    assert time.monotonic() - began < 30
