"""DKIM keys (RFC 6376, RFC 8463 Ed25519), read once at start-up from DRIP_DKIM_*.

An RSA key (PEM, PKCS#1 or PKCS#8, 1024 bits at least, 2048 advised) or an Ed25519 key (PEM PKCS#8 as
`openssl genpkey -algorithm ed25519` writes it, or dkimpy's raw base64 seed). During a key rotation two
keys sign every message, each with its own selector. A bad key file is a ConfigError naming the variable,
so the service does not start with signing silently off. Signing itself is service/compose/dkim.py.
"""
from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import nacl.signing
from dkim.crypto import UnparsableKeyError, parse_pem_private_key

from service.core.errors import ConfigError

if TYPE_CHECKING:
    from service.core.config import Settings

_PEM = re.compile(rb"-----BEGIN ([A-Z ]+)-----(.*?)-----END \1-----", re.DOTALL)
# DER of a PKCS#8 Ed25519 private key is this fixed 16-byte prefix followed by the 32-byte seed (RFC 8410).
_ED25519_PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
_RSA_OID = bytes.fromhex("06092a864886f70d010101")


@dataclass(frozen=True)
class DkimKey:
    """One signing key: where its public half is published (selector._domainkey.domain) and the secret."""

    domain: str
    selector: str
    algorithm: str  # "rsa-sha256" or "ed25519-sha256"
    private: bytes = field(repr=False)  # what dkimpy takes: PEM for RSA, base64 seed for Ed25519
    public: bytes  # the p= value, base64 (SubjectPublicKeyInfo for RSA, the raw key for Ed25519)
    bits: int = 256

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def txt_record(self) -> str:
        kind = "rsa" if self.algorithm == "rsa-sha256" else "ed25519"
        return f"v=DKIM1; k={kind}; p={self.public.decode()}"


def load_key(path: str, *, domain: str, selector: str, variable: str) -> DkimKey:
    """Read and check one key file; every failure names `variable`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read DKIM key file {path!r}: {exc.strerror or exc}") from None
    try:
        return _parse_key(data, domain=domain, selector=selector)
    except (ValueError, UnparsableKeyError, IndexError, KeyError) as exc:
        raise ConfigError(f"{variable}: {path!r} is not an RSA or Ed25519 private key ({exc})") from None


def _parse_key(data: bytes, *, domain: str, selector: str) -> DkimKey:
    m = _PEM.search(data)
    if m is None:  # dkimpy's own Ed25519 format: the base64 of the 32-byte seed
        seed = base64.b64decode(data.strip(), validate=True)
        return _ed25519(seed, domain, selector)
    der = base64.b64decode(b"".join(m.group(2).split()))
    if der.startswith(_ED25519_PKCS8_PREFIX) and len(der) == 48:
        return _ed25519(der[16:], domain, selector)
    if m.group(1) not in (b"RSA PRIVATE KEY", b"PRIVATE KEY"):
        raise ValueError(f"unsupported PEM block {m.group(1).decode()!r}")
    # dkimpy's PEM reader takes PKCS#1 and PKCS#8 DER alike, whatever the PEM label says.
    pem = b"-----BEGIN RSA PRIVATE KEY-----\n" + base64.encodebytes(der) + b"-----END RSA PRIVATE KEY-----\n"
    key = parse_pem_private_key(pem)
    bits = key["modulus"].bit_length()
    if bits < 1024:
        raise ValueError(f"an RSA key of {bits} bits is refused by receivers; use 2048")
    public = base64.b64encode(rsa_public_der(key["modulus"], key["publicExponent"]))
    return DkimKey(domain=domain, selector=selector, algorithm="rsa-sha256", private=pem, public=public, bits=bits)


def _ed25519(seed: bytes, domain: str, selector: str) -> DkimKey:
    if len(seed) != 32:
        raise ValueError("an Ed25519 seed is 32 bytes")
    verify_key = nacl.signing.SigningKey(seed).verify_key
    return DkimKey(domain=domain, selector=selector, algorithm="ed25519-sha256", private=base64.b64encode(seed),
                   public=base64.b64encode(bytes(verify_key)))


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + body


def _der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def rsa_public_der(modulus: int, exponent: int) -> bytes:
    """SubjectPublicKeyInfo DER for an RSA public key: what a DKIM TXT record's p= holds."""
    rsa_public_key = _der(0x30, _der_int(modulus) + _der_int(exponent))
    algorithm = _der(0x30, _RSA_OID + b"\x05\x00")
    return _der(0x30, algorithm + _der(0x03, b"\x00" + rsa_public_key))


def load_keys(settings: Settings) -> tuple[DkimKey, ...]:
    """The configured keys (none, one, or two during a rotation). Half a configuration is an error."""
    keys: list[DkimKey] = []
    pairs = (("DRIP_DKIM_SELECTOR", settings.dkim_selector, "DRIP_DKIM_KEY_FILE", settings.dkim_key_file),
             ("DRIP_DKIM_SELECTOR_2", settings.dkim_selector_2, "DRIP_DKIM_KEY_FILE_2", settings.dkim_key_file_2))
    for sel_var, selector, key_var, key_file in pairs:
        if not selector and not key_file:
            continue
        if not (selector and key_file):
            missing = key_var if selector else sel_var
            raise ConfigError(f"{missing}: must be set together with {sel_var if selector else key_var}")
        if not settings.dkim_domain:
            raise ConfigError("DRIP_DKIM_DOMAIN: required when a DKIM key is configured (the d= of the signature)")
        keys.append(load_key(key_file, domain=settings.dkim_domain, selector=selector, variable=key_var))
    return tuple(keys)
