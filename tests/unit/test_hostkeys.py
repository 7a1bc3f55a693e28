"""The program's generated SSH host keys are real Ed25519 keys in OpenSSH's formats."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from components import hostkeys

# RFC 8032, 7.1, TEST 1 and TEST 2: secret key (the seed) -> public key.
VECTORS = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
    ),
]


@pytest.mark.parametrize(("seed", "public"), VECTORS)
def test_the_public_half_is_rfc_8032s(seed: str, public: str) -> None:
    assert hostkeys.public_from_seed(bytes.fromhex(seed)).hex() == public


def test_a_seed_is_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        hostkeys.public_from_seed(b"short")


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="no ssh-keygen here")
def test_ssh_keygen_reads_the_private_file_and_its_signature_verifies(tmp_path: Path) -> None:
    seed = os.urandom(32)
    private, public = hostkeys.from_base64_seed(base64.b64encode(seed).decode(), "node-a")
    key = tmp_path / "ssh_host_ed25519_key"
    key.write_text(private)
    key.chmod(0o600)
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True, check=True
    )
    assert derived.stdout.split()[:2] == public.split()[:2]
    # A signature made from the seed (ssh-keygen signs with the private file) verifies with
    # the public line: a wrong public half would fail here.
    message = tmp_path / "message"
    message.write_text("host key check\n")
    subprocess.run(
        ["ssh-keygen", "-q", "-Y", "sign", "-f", str(key), "-n", "file", str(message)],
        check=True, capture_output=True,
    )
    signers = tmp_path / "allowed"
    signers.write_text(f"node-a {public}\n")
    verified = subprocess.run(
        ["ssh-keygen", "-Y", "verify", "-f", str(signers), "-I", "node-a", "-n", "file",
         "-s", f"{message}.sig"],
        stdin=message.open(), capture_output=True, text=True,
    )
    assert verified.returncode == 0, verified.stderr


def test_the_private_text_is_the_same_on_every_run() -> None:
    seed = base64.b64encode(bytes(range(32))).decode()
    assert hostkeys.from_base64_seed(seed) == hostkeys.from_base64_seed(seed)
