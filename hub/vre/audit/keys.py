"""The Ed25519 key that signs audit checkpoints.

``key_dir/audit_ed25519`` (PKCS#8 PEM, mode 0600) is created on first use, i.e. when the hub or
the CLI first opens the store at install time; ``key_dir/audit_ed25519.pub`` (PEM, 0644) is what
verification needs. Files are written to a temporary name and hard-linked into place, so two
processes starting at once end up with one key, never a half-written file.

Keep a copy of the ``.pub`` file off the host (with the auditors): ``vre audit verify
--public-key FILE`` then checks checkpoints against a key an attacker on the host cannot swap.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .schema import AuditError

PRIVATE_NAME = "audit_ed25519"
PUBLIC_NAME = "audit_ed25519.pub"


def key_id(public: Ed25519PublicKey) -> str:
    """Short fingerprint of a public key (first 16 hex digits of sha256 of its raw bytes)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _write_new(path: Path, data: bytes, mode: int) -> bool:
    """Create ``path`` with ``data`` atomically; False if it already exists."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(tmp)


def load_or_create(key_dir: Path) -> Ed25519PrivateKey:
    """The signing key, created (with its public half) if ``key_dir`` has none."""
    key_dir = Path(key_dir)
    private_path = key_dir / PRIVATE_NAME
    if not private_path.exists():
        key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        _write_new(private_path, pem, 0o600)  # lost a race: the other process's key wins
    try:
        key = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise AuditError(f"audit signing key {private_path} is unreadable: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError(f"audit signing key {private_path} is not an Ed25519 key")
    public_path = key_dir / PUBLIC_NAME
    if not public_path.exists():
        _write_new(public_path, key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    path = Path(path)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise AuditError(f"audit public key {path} not found") from None
    except ValueError as e:
        raise AuditError(f"audit public key {path} is unreadable: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditError(f"audit public key {path} is not an Ed25519 key")
    return key


def sign(key: Ed25519PrivateKey, payload: str) -> str:
    return base64.b64encode(key.sign(payload.encode("utf-8"))).decode("ascii")


def signature_ok(public: Ed25519PublicKey, payload: str, signature: str) -> bool:
    try:
        public.verify(base64.b64decode(signature, validate=True), payload.encode("utf-8"))
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False
