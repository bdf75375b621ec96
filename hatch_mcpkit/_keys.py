"""ECDSA P-256 signing keys on disk: PKCS#8 PEM private keys, SPKI PEM public keys.

The private key file is created with mode 0600 (a temporary file made by ``mkstemp``
renamed into place), so there is never a moment when another user could read it. The key
id is the one cosign and the Sigstore bundle ``publicKey.hint`` use: the base64 SHA-256 of
the DER SubjectPublicKeyInfo.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hatch_mcpkit._files import atomic_write, open_regular
from hatch_mcpkit.errors import McpkitError, SignatureError

__all__ = ["generate", "key_id", "load_private", "load_public"]

_MAX_KEY_FILE = 64 * 1024
_ENCRYPTED_PKCS8 = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"
_PASSWORD_HINT = "set MCPKIT_KEY_PASSWORD to the password the key was generated with"


def generate(prefix: Path, *, password: bytes | None) -> tuple[Path, Path]:
    """Write ``PREFIX.key`` (0600, encrypted when ``password``) and ``PREFIX.pub``; refuse to overwrite."""
    key_path, pub_path = prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")
    if not prefix.parent.is_dir():
        raise SignatureError(f"cannot write keys: folder {prefix.parent} does not exist", reason="key")
    for path in (key_path, pub_path):
        if path.exists() or path.is_symlink():
            raise SignatureError(
                f"{path} already exists; refusing to overwrite a key",
                reason="key",
                hint="choose another prefix, or move the old key pair away first",
            )
    key = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    atomic_write(key_path, pem, mode=0o600)
    atomic_write(pub_path, public_pem(key.public_key()), mode=0o644)
    return key_path, pub_path


def public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key: ec.EllipticCurvePublicKey) -> str:
    """cosign's key hint: base64 of the SHA-256 of the DER SubjectPublicKeyInfo."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode("ascii")


def _read(path: Path, what: str, *, regular: bool = True) -> bytes:
    """A key file's bytes, at most 64 KiB.

    A public key path may come from a cloned project's trust policy, so by default only a regular
    file is read: ``/dev/stdin``, a FIFO or a device is refused, never read or waited on.
    ``regular=False`` (a private key, which only the user names) also reads a pipe, e.g.
    ``--key <(pass show signing.key)``.
    """
    try:
        with (open_regular(path, where=f"{what} {path}", error=McpkitError) if regular else open(path, "rb")) as fh:
            data = fh.read(_MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise SignatureError(f"{what} {path} does not exist", reason="key",
                             hint="create a key pair with: mcpkit key generate PREFIX") from None
    except OSError as exc:
        raise SignatureError(f"cannot read {what} {path}: {exc.strerror}", reason="key") from None
    except McpkitError as exc:  # not a regular file
        raise SignatureError(exc.message, reason="key",
                             hint="a key is a PEM file (a symlink may only point at one)") from None
    if len(data) > _MAX_KEY_FILE:
        raise SignatureError(f"{what} {path} is larger than {_MAX_KEY_FILE} bytes; not a PEM key",
                             reason="key")
    return data


def _require_p256(key: object, path: Path, what: str) -> None:
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        if isinstance(key.curve, ec.SECP256R1):
            return
        kind = f"curve {key.curve.name}"
    else:
        kind = type(key).__name__.lstrip("_")
    raise SignatureError(f"{what} {path} is not an ECDSA P-256 key ({kind})", reason="key",
                         hint="mcpkit signs with ECDSA P-256 keys: mcpkit key generate PREFIX")


def load_private(path: Path, *, password: bytes | None) -> ec.EllipticCurvePrivateKey:
    """Load a PKCS#8 PEM private key; encrypted keys need ``password``."""
    data = _read(path, "private key", regular=False)
    encrypted = data.lstrip().startswith(_ENCRYPTED_PKCS8)
    if encrypted and not password:
        raise SignatureError(f"private key {path} is encrypted and no password was given",
                             reason="key", hint=_PASSWORD_HINT)
    try:
        key = serialization.load_pem_private_key(data, password if encrypted else None)
    except ValueError:
        if encrypted:
            raise SignatureError(f"wrong password for private key {path}", reason="key",
                                 hint=_PASSWORD_HINT) from None
        raise SignatureError(f"{path} is not a PKCS#8 PEM private key", reason="key",
                             hint="mcpkit reads keys made by: mcpkit key generate PREFIX") from None
    except (TypeError, UnsupportedAlgorithm) as exc:
        raise SignatureError(f"{path} is not a usable PEM private key ({type(exc).__name__})",
                             reason="key") from None
    _require_p256(key, path, "private key")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def load_public(path: Path) -> ec.EllipticCurvePublicKey:
    """Load an SPKI PEM public key (``PREFIX.pub``, or cosign's ``cosign.pub``)."""
    data = _read(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SignatureError(f"{path} is not a PEM public key (SubjectPublicKeyInfo)", reason="key",
                             hint="pass the .pub file written by: mcpkit key generate PREFIX") from None
    _require_p256(key, path, "public key")
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key
