"""Ed25519 signature verification for the device, through the OpenSSL ``libcrypto`` that Python's
``hashlib`` has already loaded into every process.

Why not simply ``cryptography``: it ships its own statically linked OpenSSL, and importing it adds
~6.5 MB of resident memory to the agent (bench/agent.py measures the agent's RSS), all to check a
couple of signatures per bundle. The system libcrypto is the same, well-kept implementation and is
already mapped. This module only *verifies*; keys are generated and bundles signed on the host with
``cryptography``, which is also the fallback here when libcrypto cannot be used (e.g. no OpenSSL 1.1.1+).
tests/test_ed25519.py cross-checks both verifiers on random keys, messages and mutated signatures.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import functools
from collections.abc import Callable

EVP_PKEY_ED25519 = 1087  # NID_ED25519
SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")  # DER SubjectPublicKeyInfo header for Ed25519


@functools.cache
def _libcrypto() -> ctypes.CDLL | None:
    import hashlib  # noqa: F401  (makes sure libcrypto is mapped, so CDLL below adds nothing)

    name = ctypes.util.find_library("crypto")
    if not name:
        return None
    try:
        lib = ctypes.CDLL(name)
        lib.EVP_PKEY_new_raw_public_key.restype = ctypes.c_void_p
        lib.EVP_PKEY_new_raw_public_key.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        lib.EVP_MD_CTX_new.restype = ctypes.c_void_p
        lib.EVP_MD_CTX_new.argtypes = []
        lib.EVP_DigestVerifyInit.restype = ctypes.c_int
        lib.EVP_DigestVerifyInit.argtypes = [ctypes.c_void_p] * 5
        lib.EVP_DigestVerify.restype = ctypes.c_int
        lib.EVP_DigestVerify.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_char_p,
            ctypes.c_size_t,
        ]
        lib.EVP_MD_CTX_free.argtypes = [ctypes.c_void_p]
        lib.EVP_PKEY_free.argtypes = [ctypes.c_void_p]
        lib.ERR_clear_error.argtypes = []
    except (OSError, AttributeError):
        return None
    return lib


def _verify_libcrypto(lib: ctypes.CDLL, public: bytes, signature: bytes, message: bytes) -> bool:
    pkey = lib.EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, None, public, len(public))
    if not pkey:
        lib.ERR_clear_error()
        return False
    ctx = lib.EVP_MD_CTX_new()
    try:
        if not ctx or lib.EVP_DigestVerifyInit(ctx, None, None, None, pkey) != 1:
            return False
        return bool(lib.EVP_DigestVerify(ctx, signature, len(signature), message, len(message)) == 1)
    finally:
        if ctx:
            lib.EVP_MD_CTX_free(ctx)
        lib.EVP_PKEY_free(pkey)
        lib.ERR_clear_error()


def _verify_cryptography(public: bytes, signature: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except InvalidSignature:
        return False
    return True


def verifier() -> Callable[[bytes, bytes, bytes], bool]:
    """The verify function in use: libcrypto when available, else ``cryptography``."""
    lib = _libcrypto()
    return functools.partial(_verify_libcrypto, lib) if lib is not None else _verify_cryptography


def verify(public: bytes, signature: bytes, message: bytes) -> bool:
    """True iff ``signature`` is a valid Ed25519 signature of ``message`` by the 32-byte ``public`` key."""
    if len(public) != 32 or len(signature) != 64:
        return False
    return verifier()(public, signature, message)


def public_key_from_pem(data: bytes) -> bytes | None:
    """The raw 32-byte key of an Ed25519 ``PUBLIC KEY`` PEM, or None if ``data`` is not exactly that."""
    text = data.decode("ascii", "replace").strip().splitlines()
    if len(text) < 3 or text[0] != "-----BEGIN PUBLIC KEY-----" or text[-1] != "-----END PUBLIC KEY-----":
        return None
    try:
        der = base64.b64decode("".join(text[1:-1]), validate=True)
    except ValueError:
        return None
    if len(der) != len(SPKI_PREFIX) + 32 or not der.startswith(SPKI_PREFIX):
        return None
    return der[len(SPKI_PREFIX) :]
