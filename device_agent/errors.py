"""The error hierarchy shared by every edgefleet part.

Few roots, grouped by cause (after python-tuf): bad data (``BundleError``, ``ProtocolError``),
bad local configuration (``ConfigError``), and transport trouble (``TransportError``); the device's
own failures (no verified model, a runtime that cannot load or run a model) subclass the root directly. Each error
carries a stable, kebab-case ``code`` that travels in deployment events as the ``reason``, so a
device's refusal can be read by machines as well as people.
"""

from __future__ import annotations


class EdgefleetError(Exception):
    """Root of every error edgefleet raises on purpose."""

    code = "error"


class ConfigError(EdgefleetError):
    """A local file or setting (key, trust store, agent.toml) is missing or malformed."""

    code = "config"


class KeyFileError(ConfigError):
    """A key file cannot be read or is not an Ed25519 key."""

    code = "key-file"


class StateError(ConfigError):
    """state.json is missing or unreadable."""

    code = "state"


class TransportError(EdgefleetError):
    """A network peer (broker, HTTP server) could not be reached or misbehaved.

    ``rc`` is the MQTT client's return code when the MQTT layer reported one, else None.
    """

    code = "transport"

    def __init__(self, message: str = "", *, rc: int | None = None) -> None:
        super().__init__(message)
        self.rc = rc


class DownloadError(TransportError):
    """The artifact could not be downloaded (after retries). ``status``: the HTTP status, when there was one."""

    code = "download"

    def __init__(self, message: str = "", *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DownloadTooLargeError(DownloadError):
    """The artifact is larger than the cap, or than the size the deploy command announced."""

    code = "download-too-large"


class DownloadHashError(DownloadError):
    """The downloaded artifact's SHA-256 differs from the deploy command's."""

    code = "download-hash"


class UrlNotAllowedError(DownloadError):
    """The artifact URL (or a redirect) is outside ``[download] allowed_urls``."""

    code = "url-not-allowed"


class RangeIgnoredError(TransportError):
    """The server answered a Range request with the whole resource."""


class LocalApiError(EdgefleetError):
    """A request to the agent's local HTTP API is malformed, or the API answered with an error.

    ``status``: the HTTP status the API answered with (None for a body refused before any answer).
    """

    code = "bad-request"

    def __init__(self, message: str = "", *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ApiRefusedError(LocalApiError):
    """The local API refused a request before doing any work; ``code`` says why (``length-required``,
    ``too-large``, ``unauthorized``, ``bad-host``, ``bad-origin``, ``busy``, ``bad-request``)."""

    def __init__(self, message: str = "", *, status: int, code: str) -> None:
        super().__init__(message, status=status)
        self.code = code


# --- the device: models, runtimes, updates ------------------------------------------------------------


class NoVerifiedModelError(EdgefleetError):
    """Neither slot holds a bundle that verifies: the device cannot serve."""

    code = "no-verified-model"


class RuntimeLoadError(EdgefleetError):
    """The runtime is not installed, or it cannot load the model."""

    code = "runtime"


class RuntimeRunError(EdgefleetError):
    """A loaded model failed while running: a feed it cannot take, or the runtime's own failure."""

    code = "runtime-run"


class InferenceError(EdgefleetError):
    """A request cannot be run: wrong input names, shapes or dtypes, or the runtime failed on it."""

    code = "inference"


class StorageError(EdgefleetError):
    """The device's storage failed under a step (an I/O error other than a full disk)."""

    code = "io"


class NoSpaceError(StorageError):
    """Not enough free space on the device home's filesystem for a step.

    ``needed`` and ``free``: bytes (``needed`` 0 when the disk filled up under a write already started).
    """

    code = "no-space"

    def __init__(self, message: str = "", *, needed: int = 0, free: int = 0) -> None:
        super().__init__(message)
        self.needed, self.free = needed, free


class SelfTestError(EdgefleetError):
    """The model does not reproduce its bundle's reference outputs on this device."""

    code = "selftest"


# --- bundles -----------------------------------------------------------------------------------


class BundleError(EdgefleetError):
    """A bundle was refused. Subclasses say why; ``code`` is the machine-readable reason."""

    code = "bundle"


class BundleFormatError(BundleError):
    """The bytes are not a readable ZIP archive, or a required member is missing."""

    code = "bad-archive"


class UnsafeEntryError(BundleError):
    """An archive entry could escape or confuse the install directory."""

    code = "unsafe-entry"


class PathTraversalError(UnsafeEntryError):
    """An entry name contains a ``..`` component."""

    code = "path-traversal"


class AbsolutePathError(UnsafeEntryError):
    """An entry name is absolute (``/x``, ``C:\\x``) or uses backslashes."""

    code = "absolute-path"


class SymlinkError(UnsafeEntryError):
    """An entry is a symbolic link (or another non-regular file)."""

    code = "symlink"


class DuplicateEntryError(BundleError):
    """Two entries share one name; which one a tool extracts would be ambiguous."""

    code = "duplicate-entry"


class LimitExceededError(BundleError):
    """The archive exceeds a size, count or compression-ratio limit (zip bomb defence)."""

    code = "limit-exceeded"


class EntryTooLargeError(LimitExceededError):
    """One entry, or the whole archive, is larger than the configured cap."""

    code = "oversized"


class CompressionRatioError(LimitExceededError):
    """An entry expands more than the allowed ratio: the signature of a zip bomb."""

    code = "zip-bomb"


class TooManyEntriesError(LimitExceededError):
    """The archive has more entries than the configured cap."""

    code = "too-many-entries"


class SignatureError(BundleError):
    """The manifest's signatures do not satisfy the trust store."""

    code = "signature"


class MissingSignatureError(SignatureError):
    """``manifest.sig`` is absent or holds no signature."""

    code = "missing-signature"


class UnknownKeyError(SignatureError):
    """No signature is from a key in the trust store."""

    code = "unknown-key"


class BadSignatureError(SignatureError):
    """A signature from a trusted key does not match the manifest bytes."""

    code = "bad-signature"


class ThresholdError(SignatureError):
    """Fewer valid trusted signatures than the threshold requires."""

    code = "threshold"


class RevokedKeyError(SignatureError):
    """The only signatures are from keys the trust metadata revoked (or removed)."""

    code = "revoked-key"


class TrustExpiredError(BundleError):
    """The device's trust metadata has expired: no new bundle until a newer version arrives."""

    code = "trust-expired"


class ManifestError(BundleError):
    """``manifest.json`` fails the schema (wrong type, missing field, bad value)."""

    code = "bad-manifest"


class UnsupportedFormatError(ManifestError):
    """The manifest declares a bundle format version this reader does not know."""

    code = "unsupported-format"


class FileIntegrityError(BundleError):
    """The archive's files disagree with the manifest."""

    code = "integrity"


class HashMismatchError(FileIntegrityError):
    """A file's SHA-256 differs from the manifest."""

    code = "hash-mismatch"


class SizeMismatchError(FileIntegrityError):
    """A file's size differs from the manifest."""

    code = "size-mismatch"


class UnexpectedFileError(FileIntegrityError):
    """The archive holds a file the manifest does not list."""

    code = "unexpected-file"


class MissingFileError(FileIntegrityError):
    """The manifest lists a file the archive does not hold."""

    code = "missing-file"


class DowngradeError(BundleError):
    """The bundle's ``sequence`` is not above the device's highest committed one."""

    code = "downgrade"


class WrongModelError(BundleError):
    """The bundle is for a model name this device was not provisioned for (``[device] models``)."""

    code = "wrong-model"


class RequirementError(BundleError):
    """The device cannot meet the bundle's runtime or resource requirements."""

    code = "requirements"


# --- trust metadata (trust.json) ---------------------------------------------------------------


class TrustError(EdgefleetError):
    """Trust metadata was refused. Subclasses say why; ``code`` is the machine-readable reason."""

    code = "trust"


class TrustFormatError(TrustError):
    """``trust.json`` fails the schema (not JSON, wrong type, missing field, inconsistent key ids)."""

    code = "bad-trust"


class TrustSignatureError(TrustError):
    """A trust version lacks the threshold of valid signatures from the previous or its own root keys."""

    code = "trust-signature"


class TrustVersionError(TrustError):
    """A trust version does not follow the one held: older or equal (replay), or a skipped version."""

    code = "trust-version"


# --- MQTT protocol ------------------------------------------------------------------------------


class ProtocolError(EdgefleetError):
    """An MQTT topic or payload does not follow protocol version 1."""

    code = "protocol"


class TopicError(ProtocolError):
    """A topic is not of the form ``edgefleet/v1/{fleet}/{device}/{kind}``."""

    code = "bad-topic"


class PayloadError(ProtocolError):
    """A payload is not valid JSON of the expected shape."""

    code = "bad-payload"


class PayloadTooLargeError(PayloadError):
    """A payload is larger than the limit for its topic."""

    code = "payload-too-large"
