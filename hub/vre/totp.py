"""The second factor of local accounts: time-based one-time passwords (RFC 6238, the codes of any
authenticator app) and single-use recovery codes.

Secrets live in the VRE database (root-only, like the password hashes); a code is accepted once
(the last accepted time step is kept, so a code seen over a shoulder cannot be replayed), within
one step (30 s) of the server's clock either way. Recovery codes are random (50 bits) and stored as
SHA-256 digests: a slow hash buys nothing for codes that cannot be guessed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import time
from urllib.parse import quote, urlencode

STEP = 30
DIGITS = 6
RECOVERY_CODES = 10


def new_secret() -> str:
    """A fresh 160-bit secret, base32 as authenticator apps take it."""
    return base64.b32encode(secrets.token_bytes(20)).decode()


def code_at(secret: str, step: int, digits: int = DIGITS) -> str:
    """The code of time step ``step`` (RFC 4226 dynamic truncation over HMAC-SHA1)."""
    key = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
    mac = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10 ** digits).zfill(digits)


def verify(secret: str, code: str, last_step: int | None, now: float | None = None) -> int | None:
    """The time step ``code`` belongs to (to remember), or None: wrong, too old, or already used."""
    code = (code or "").replace(" ", "")
    if not (code.isdigit() and len(code) == DIGITS):
        return None
    current = int((time.time() if now is None else now) // STEP)
    for step in (current - 1, current, current + 1):
        if (last_step is None or step > last_step) and hmac.compare_digest(code_at(secret, step), code):
            return step
    return None


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    """The ``otpauth://`` URI an authenticator app reads from the QR code."""
    label = quote(f"{issuer}:{account}", safe="")
    return f"otpauth://totp/{label}?" + urlencode({"secret": secret, "issuer": issuer, "digits": DIGITS,
                                                    "period": STEP, "algorithm": "SHA1"})


def qr_svg(uri: str) -> str:
    """The URI as an inline SVG QR code (no image file, no request to anyone)."""
    import segno

    return segno.make(uri, error="m").svg_inline(scale=5, border=2)


def _digest(code: str) -> str:
    return hashlib.sha256(code.replace("-", "").replace(" ", "").lower().encode()).hexdigest()


def new_recovery_codes(n: int = RECOVERY_CODES) -> tuple[list[str], list[str]]:
    """(codes to show once, digests to store)."""
    codes = []
    for _ in range(n):
        raw = base64.b32encode(secrets.token_bytes(7)).decode()[:10].lower()
        codes.append(f"{raw[:5]}-{raw[5:]}")
    return codes, [_digest(c) for c in codes]


def use_recovery_code(digests: list[str] | None, code: str) -> list[str] | None:
    """The digests left after using ``code``, or None when it is not one of them."""
    if not digests or not code or code.replace(" ", "").isdigit():
        return None
    d = _digest(code)
    match = [x for x in digests if hmac.compare_digest(x, d)]
    return [x for x in digests if x != match[0]] if match else None
