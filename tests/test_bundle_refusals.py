"""Every refusal DESIGN.md lists for the bundle reader, one test each, asserting the specific error."""

from __future__ import annotations

import stat
import zipfile

import pytest

from device_agent import errors as E
from device_agent.bundle import DeviceCapabilities, Limits, PrivateKey, TrustStore, verify_bundle
from tests.support.bundles import MODEL, Entry, Parts, forge, simple_bundle


@pytest.fixture
def good(release_key: PrivateKey) -> bytes:
    return simple_bundle(release_key)


@pytest.fixture
def parts(good: bytes) -> Parts:
    return Parts.of(good)


def test_the_unmodified_bundle_is_accepted(good: bytes, trust: TrustStore) -> None:
    bundle = verify_bundle(good, trust, highest_sequence={"digits": 4})
    assert bundle.manifest.sequence == 5
    assert bundle.read("model/model.tflite") == MODEL


def test_flipped_byte_in_model_is_a_hash_mismatch(parts: Parts, trust: TrustStore) -> None:
    model = bytearray(parts.files["model/model.tflite"])
    model[100] ^= 0x01
    data = forge(parts, replace={"model/model.tflite": bytes(model)})
    with pytest.raises(E.HashMismatchError, match=r"model/model\.tflite"):
        verify_bundle(data, trust)


def test_flipped_byte_in_model_inside_the_zip_bytes(good: bytes, trust: TrustStore) -> None:
    data = bytearray(good)
    at = data.find(MODEL[:64])
    data[at + 1000] ^= 0xFF
    with pytest.raises(E.HashMismatchError):
        verify_bundle(bytes(data), trust)


def test_truncated_model_is_a_size_mismatch(parts: Parts, trust: TrustStore) -> None:
    data = forge(parts, replace={"model/model.tflite": MODEL[:-1]})
    with pytest.raises(E.SizeMismatchError):
        verify_bundle(data, trust)


def test_tampered_manifest_fails_the_signature(parts: Parts, trust: TrustStore) -> None:
    parts.manifest["sequence"] = 99  # signatures are the original ones
    with pytest.raises(E.BadSignatureError):
        verify_bundle(forge(parts), trust)


def test_missing_signature_file(parts: Parts, trust: TrustStore) -> None:
    parts.signatures = []
    with pytest.raises(E.MissingSignatureError, match=r"no manifest\.sig"):
        verify_bundle(forge(parts), trust)


def test_empty_signature_list(parts: Parts, trust: TrustStore) -> None:
    with pytest.raises(E.MissingSignatureError):
        verify_bundle(forge(parts, signatures_bytes=b'{"signatures":[]}'), trust)


def test_unknown_key(parts: Parts, trust: TrustStore) -> None:
    stranger = PrivateKey.generate()
    with pytest.raises(E.UnknownKeyError, match=stranger.keyid):
        verify_bundle(forge(parts, sign_with=[stranger]), trust)


def test_threshold_not_met(parts: Parts, release_key: PrivateKey) -> None:
    second = PrivateKey.generate()
    store = TrustStore.of([release_key.public_key, second.public_key], threshold=2)
    with pytest.raises(E.ThresholdError, match="threshold is 2"):
        verify_bundle(forge(parts, sign_with=[release_key]), store)
    assert len(verify_bundle(forge(parts, sign_with=[release_key, second]), store).signed_by) == 2


def test_file_not_in_manifest(parts: Parts, trust: TrustStore) -> None:
    with pytest.raises(E.UnexpectedFileError, match=r"extra\.bin"):
        verify_bundle(forge(parts, extra=[Entry("extra.bin", b"surprise")]), trust)


def test_file_missing_from_archive(parts: Parts, trust: TrustStore) -> None:
    with pytest.raises(E.MissingFileError, match=r"labels\.txt"):
        verify_bundle(forge(parts, drop=["labels.txt"]), trust)


def test_path_traversal(parts: Parts, trust: TrustStore) -> None:
    with pytest.raises(E.PathTraversalError):
        verify_bundle(forge(parts, extra=[Entry("model/../../etc/passwd", b"x")]), trust)


@pytest.mark.parametrize("name", ["/etc/passwd", "C:/evil", "model\\evil"])
def test_absolute_path(parts: Parts, trust: TrustStore, name: str) -> None:
    with pytest.raises(E.AbsolutePathError):
        verify_bundle(forge(parts, extra=[Entry(name, b"x")]), trust)


def test_symlink(parts: Parts, trust: TrustStore) -> None:
    link = Entry("model/link", b"/etc/shadow", mode=stat.S_IFLNK | 0o777)
    with pytest.raises(E.SymlinkError):
        verify_bundle(forge(parts, extra=[link]), trust)


def test_duplicate_entry(parts: Parts, trust: TrustStore) -> None:
    twin = Entry("model/model.tflite", b"evil twin")
    with pytest.raises(E.DuplicateEntryError):
        verify_bundle(forge(parts, extra=[twin]), trust)


def test_case_folded_duplicate_entry(parts: Parts, trust: TrustStore) -> None:
    with pytest.raises(E.DuplicateEntryError):
        verify_bundle(forge(parts, extra=[Entry("LABELS.txt", b"x")]), trust)


def test_zip_bomb_compression_ratio(parts: Parts, trust: TrustStore) -> None:
    bomb = Entry("bomb.bin", b"\0" * (8 << 20), compress=zipfile.ZIP_DEFLATED)
    with pytest.raises(E.CompressionRatioError, match="zip bomb"):
        verify_bundle(forge(parts, extra=[bomb]), trust)


def test_oversized_entry(good: bytes, trust: TrustStore) -> None:
    with pytest.raises(E.EntryTooLargeError):
        verify_bundle(good, trust, limits=Limits(max_entry_bytes=len(MODEL) - 1))


def test_oversized_bundle(good: bytes, trust: TrustStore) -> None:
    with pytest.raises(E.EntryTooLargeError):
        verify_bundle(good, trust, limits=Limits(max_bundle_bytes=len(good) - 1))


def test_too_many_entries(parts: Parts, trust: TrustStore) -> None:
    many = [Entry(f"junk/{i}", b"") for i in range(70)]
    with pytest.raises(E.TooManyEntriesError):
        verify_bundle(forge(parts, extra=many), trust)


def test_manifest_failing_the_schema(parts: Parts, trust: TrustStore, release_key: PrivateKey) -> None:
    parts.manifest["sequence"] = "five"
    with pytest.raises(E.ManifestError, match=r"manifest\.sequence must be an integer"):
        verify_bundle(forge(parts, sign_with=[release_key]), trust)


def test_manifest_that_is_not_json(parts: Parts, trust: TrustStore, release_key: PrivateKey) -> None:
    with pytest.raises(E.ManifestError, match="not valid JSON"):
        verify_bundle(forge(parts, sign_with=[release_key], manifest_bytes=b"{not json"), trust)


def test_unknown_format_version(parts: Parts, trust: TrustStore, release_key: PrivateKey) -> None:
    parts.manifest["format"] = "edgefleet-bundle/3"
    with pytest.raises(E.UnsupportedFormatError, match="edgefleet-bundle/3"):
        verify_bundle(forge(parts, sign_with=[release_key]), trust)


@pytest.mark.parametrize("committed", [5, 6])
def test_downgrade(good: bytes, trust: TrustStore, committed: int) -> None:
    with pytest.raises(E.DowngradeError, match=f"committed sequence {committed}"):
        verify_bundle(good, trust, highest_sequence={"digits": committed})


def test_sequence_of_another_name_does_not_block(good: bytes, trust: TrustStore) -> None:
    assert verify_bundle(good, trust, highest_sequence={"other": 100}).manifest.name == "digits"


@pytest.mark.parametrize(
    ("device", "message"),
    [
        (DeviceCapabilities(runtimes={"onnx": "1.17.0"}), "runtime tflite is not available"),
        (DeviceCapabilities(runtimes={"tflite": "2.13.0"}), "older than the required 2.14.0"),
        (DeviceCapabilities(agent_version="0.0.1"), "agent 0.0.1 is older"),
        (DeviceCapabilities(ram_bytes=10), "bytes of RAM"),
    ],
)
def test_requirements_the_device_cannot_meet(
    release_key: PrivateKey, trust: TrustStore, device: DeviceCapabilities, message: str
) -> None:
    from dataclasses import replace

    from device_agent.bundle import Requirements, build_bundle
    from tests.support.bundles import simple_manifest

    manifest = replace(simple_manifest(), requirements=Requirements(ram_bytes=1 << 20, min_agent_version="0.1.0"))
    data = build_bundle(manifest, {"model/model.tflite": MODEL}, [release_key])
    with pytest.raises(E.RequirementError, match=message):
        verify_bundle(data, trust, device=device)
    assert verify_bundle(data, trust, device=DeviceCapabilities({"tflite": "2.16.1"}, "0.1.0", "x86_64", 1 << 30))


def test_not_a_zip(trust: TrustStore) -> None:
    with pytest.raises(E.BundleFormatError, match="not a readable ZIP"):
        verify_bundle(b"PK\x03\x04 certainly not a zip", trust)


def test_no_manifest(parts: Parts, trust: TrustStore) -> None:
    from tests.support.bundles import write_raw

    with pytest.raises(E.BundleFormatError, match=r"no manifest\.json"):
        verify_bundle(write_raw([Entry("model/model.tflite", MODEL)]), trust)


def test_every_refusal_is_a_bundle_error_with_a_code() -> None:
    """The hierarchy promise: each refusal class is a BundleError and has its own reason code."""
    classes = [c for c in vars(E).values() if isinstance(c, type) and issubclass(c, E.BundleError)]
    codes = [c.code for c in classes]
    assert len(classes) > 20
    assert len(set(codes)) == len(codes)
