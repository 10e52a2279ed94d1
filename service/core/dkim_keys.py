"""DKIM keys (RFC 6376, RFC 8463 Ed25519), read once at start-up from DRIP_DKIM_*.

An RSA key (PEM, PKCS#1 or PKCS#8, 1024 bits at least, 2048 advised) or an Ed25519 key (PEM PKCS#8 as
`openssl genpkey -algorithm ed25519` writes it, or dkimpy's raw base64 seed). During a key rotation two
keys sign every message, each with its own selector. A bad key file is a ConfigError naming the variable,
so the service does not start with signing silently off. Signing itself is service/compose/dkim.py.

Keys are read by the `cryptography` package (OpenSSL): no hand-written DER or PEM parsing here.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from service.core.errors import ConfigError

if TYPE_CHECKING:
    from service.core.config import Settings

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class DkimKey:
    """One signing key: where its public half is published (selector._domainkey.domain) and the secret."""

    domain: str
    selector: str
    algorithm: str  # "rsa-sha256" or "ed25519-sha256"
    private: PrivateKey = field(repr=False, compare=False)
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
        return key_from_bytes(data, domain=domain, selector=selector)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{variable}: {path!r} is not an RSA or Ed25519 private key ({exc})") from None


def key_from_bytes(data: bytes, *, domain: str, selector: str) -> DkimKey:
    """A DkimKey from the contents of a key file (PEM, or dkimpy's base64 Ed25519 seed)."""
    if b"-----BEGIN" not in data:  # dkimpy's own Ed25519 format: the base64 of the 32-byte seed
        seed = base64.b64decode(data.strip(), validate=True)
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        return from_private_key(ed25519.Ed25519PrivateKey.from_private_bytes(seed), domain=domain,
                                selector=selector)
    key = serialization.load_pem_private_key(data, password=None)
    return from_private_key(key, domain=domain, selector=selector)


def from_private_key(key: object, *, domain: str, selector: str) -> DkimKey:
    """A DkimKey for a `cryptography` private key object; other key types (EC, DSA) are refused."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return DkimKey(domain=domain, selector=selector, algorithm="ed25519-sha256", private=key,
                       public=base64.b64encode(raw))
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 1024:
            raise ValueError(f"an RSA key of {key.key_size} bits is refused by receivers; use 2048")
        spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        return DkimKey(domain=domain, selector=selector, algorithm="rsa-sha256", private=key,
                       public=base64.b64encode(spki), bits=key.key_size)
    raise ValueError(f"unsupported key type {type(key).__name__}; DKIM signs with RSA or Ed25519")


def same_public_key(published: bytes, key: DkimKey) -> bool:
    """Whether the p= bytes published in DNS are `key`'s public half. RSA records may hold the
    SubjectPublicKeyInfo or the bare PKCS#1 key (both are seen in the wild); Ed25519 holds the raw key."""
    ours = base64.b64decode(key.public)
    if key.algorithm != "rsa-sha256":
        return published == ours
    try:
        theirs = serialization.load_der_public_key(published)
    except (ValueError, UnsupportedAlgorithm):
        return False
    mine = serialization.load_der_public_key(ours)
    return isinstance(theirs, rsa.RSAPublicKey) and theirs.public_numbers() == mine.public_numbers()


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
