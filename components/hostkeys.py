"""SSH host keys the program generates for new servers (issue 13, point 3).

A host key is an Ed25519 key pair derived from 32 random bytes (pulumi_random.RandomBytes, kept
secret in the stack's state, as every other generated secret). pulumi-random has no key type and
the program has no other crypto dependency, so the public half is computed here: RFC 8032's key
derivation (SHA-512 of the seed, clamped, times the base point) - no signing, which sshd does on
the node with its own OpenSSH. tests/unit/test_hostkeys.py checks the result against RFC 8032's
test vectors and against ssh-keygen (a signature made with the private file verifies with the
public line).
"""

from __future__ import annotations

import base64
import hashlib

_P = 2**255 - 19
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)
KEY_TYPE = b"ssh-ed25519"


def _recover_x(y: int, sign: int) -> int:
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P != 0:
        x = x * _SQRT_M1 % _P
    return _P - x if (x & 1) != sign else x


_GY = 4 * pow(5, _P - 2, _P) % _P
_GX = _recover_x(_GY, 0)
_BASE = (_GX, _GY, 1, _GX * _GY % _P)


def _add(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Point addition in extended coordinates (RFC 8032, 5.1.4)."""
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % _P
    bb = (y1 + x1) * (y2 + x2) % _P
    cc = t1 * 2 * _D * t2 % _P
    dd = z1 * 2 * z2 % _P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return e * f % _P, g * h % _P, f * g % _P, e * h % _P


def _multiply(scalar: int, point: tuple[int, ...]) -> tuple[int, ...]:
    result: tuple[int, ...] = (0, 1, 1, 0)
    while scalar:
        if scalar & 1:
            result = _add(result, point)
        point = _add(point, point)
        scalar >>= 1
    return result


def public_from_seed(seed: bytes) -> bytes:
    """The 32-byte Ed25519 public key of a 32-byte seed (RFC 8032, 5.1.5)."""
    if len(seed) != 32:
        raise ValueError(f"an Ed25519 seed is 32 bytes, not {len(seed)}")
    digest = hashlib.sha512(seed).digest()
    scalar = int.from_bytes(digest[:32], "little")
    scalar &= (1 << 254) - 8
    scalar |= 1 << 254
    x, y, z, _ = _multiply(scalar, _BASE)
    inverse = pow(z, _P - 2, _P)
    x, y = x * inverse % _P, y * inverse % _P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _blob(public: bytes) -> bytes:
    return _string(KEY_TYPE) + _string(public)


def public_line(seed: bytes, comment: str = "") -> str:
    """The key's one-line OpenSSH form: `ssh-ed25519 AAAA... comment`."""
    line = f"ssh-ed25519 {base64.b64encode(_blob(public_from_seed(seed))).decode()}"
    return f"{line} {comment}" if comment else line


def private_text(seed: bytes, comment: str = "") -> str:
    """The key as an unencrypted OpenSSH private key file (what /etc/ssh/ssh_host_* holds).
    Deterministic: the check number is taken from the seed, so a re-run writes the same text."""
    public = public_from_seed(seed)
    check = hashlib.sha256(b"airflow-ha host key" + seed).digest()[:4]
    body = (
        check + check + _string(KEY_TYPE) + _string(public)
        + _string(seed + public) + _string(comment.encode())
    )
    body += bytes(range(1, (8 - len(body) % 8) % 8 + 1))
    data = (
        b"openssh-key-v1\x00" + _string(b"none") + _string(b"none") + _string(b"")
        + (1).to_bytes(4, "big") + _string(_blob(public)) + _string(body)
    )
    text = base64.b64encode(data).decode()
    lines = [text[i : i + 70] for i in range(0, len(text), 70)]
    return "\n".join(
        ["-----BEGIN OPENSSH PRIVATE KEY-----", *lines, "-----END OPENSSH PRIVATE KEY-----", ""]
    )


def from_base64_seed(seed_b64: str, comment: str = "") -> tuple[str, str]:
    """(private file text, public line) of a RandomBytes' base64 output."""
    seed = base64.b64decode(seed_b64)
    return private_text(seed, comment), public_line(seed, comment)
