"""The signed bundle format (``NAME-VERSION.efb``): one definition for the device, toolchain and fleet.

Typical use::

    trust = TrustStore.from_paths(["trust/"])
    bundle = verify_bundle(Path("digits-1.0.0.efb").read_bytes(), trust, highest_sequence={"digits": 3})
    bundle.manifest.version
"""

from device_agent.bundle.archive import Limits
from device_agent.bundle.keys import PrivateKey, PublicKey, TrustStore
from device_agent.bundle.manifest import (
    COMPACT_FORMAT,
    FORMAT,
    CompactSelfTest,
    FileEntry,
    Manifest,
    Postprocess,
    Quantization,
    Requirements,
    RuntimeSpec,
    SelfTest,
    TensorInfo,
)
from device_agent.bundle.reader import Bundle, DeviceCapabilities, check_requirements, read_bundle, verify_bundle
from device_agent.bundle.writer import add_signatures, build_bundle, file_entry

__all__ = [
    "COMPACT_FORMAT",
    "FORMAT",
    "Bundle",
    "CompactSelfTest",
    "DeviceCapabilities",
    "FileEntry",
    "Limits",
    "Manifest",
    "Postprocess",
    "PrivateKey",
    "PublicKey",
    "Quantization",
    "Requirements",
    "RuntimeSpec",
    "SelfTest",
    "TensorInfo",
    "TrustStore",
    "add_signatures",
    "build_bundle",
    "check_requirements",
    "file_entry",
    "read_bundle",
    "verify_bundle",
]
