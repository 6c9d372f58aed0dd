"""A verified bundle loaded into its runtime: prediction with float/quantized I/O, and the self-test."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from device_agent.bundle import Bundle, TrustStore, verify_bundle
from device_agent.bundle.archive import Buffer
from device_agent.bundle.reader import DeviceCapabilities
from device_agent.errors import EdgefleetError, InferenceError
from device_agent.runtime import Runtime, load_runtime
from device_agent.runtime.base import dequantize, quantize
from device_agent.samples import join, take

if TYPE_CHECKING:
    from device_agent.selftest import Reference, SelfTestResult


class LoadedModel:
    """One bundle's model in its runtime. ``predict`` is serialized per model (interpreters are not
    thread-safe); several LoadedModels can serve side by side during a hot swap."""

    def __init__(self, bundle: Bundle, runtime: Runtime, slot: str) -> None:
        # Keep what serving needs, not the bundle's buffer: the runtime holds the model bytes, and a
        # second copy of a large model would double the agent's memory.
        self.manifest = bundle.manifest
        self.signed_by = bundle.signed_by
        self._selftest_npz = bundle.read(self.manifest.selftest.path) if self.manifest.selftest else b""
        self.runtime = runtime
        self.slot = slot
        self._lock = threading.Lock()
        self._reference: Reference | None = None
        # per-call work kept out of the hot path
        self._in_plan = [(t, np.dtype(t.dtype)) for t in self.manifest.inputs]
        self._quantized_outputs = [t for t in self.manifest.outputs if t.quantization is not None]
        post = self.manifest.postprocess
        self._class_output = post.output if post.kind == "classification" else None
        labels = bundle.read(self.manifest.postprocess.labels).decode() if self.manifest.postprocess.labels else ""
        self.labels = [line for line in labels.splitlines() if line]
        self.drift_ref: dict[str, Any] | None = (
            json.loads(bundle.read(self.manifest.drift)) if self.manifest.drift else None
        )

    @classmethod
    def load(
        cls,
        data: Buffer,
        trust: TrustStore,
        *,
        slot: str,
        threads: int = 1,
        highest_sequence: Mapping[str, int] | None = None,
        device: DeviceCapabilities | None = None,
    ) -> LoadedModel:
        """Verify ``data`` and load its model.

        Raises:
            BundleError: the bundle is refused (see device_agent.errors).
            RuntimeLoadError: the runtime is missing or refuses the model.
        """
        bundle = verify_bundle(data, trust, highest_sequence=highest_sequence, device=device)
        model_bytes = bundle.read(bundle.manifest.model.path)
        return cls(bundle, load_runtime(bundle.manifest.runtime.name, model_bytes, threads), slot)

    @property
    def sha256(self) -> str:
        return self.manifest.model.sha256

    def predict(self, feeds: Mapping[str, np.ndarray], *, raw: bool = False) -> dict[str, np.ndarray]:
        """Run one request. Float data for a quantized input is quantized; quantized outputs are
        dequantized to float32 unless ``raw``.

        Raises:
            InferenceError: a missing input, or a shape/dtype the model cannot take.
        """
        runtime_feeds = {}
        for spec, want in self._in_plan:
            value = feeds.get(spec.name)
            if value is None:
                if len(self._in_plan) == 1 and len(feeds) == 1:
                    value = next(iter(feeds.values()))
                else:
                    raise InferenceError(f"missing input {spec.name!r}; the model takes {self._input_names()}")
            array = value if type(value) is np.ndarray else np.asarray(value)
            if array.dtype != want and array.dtype.kind == "f":
                # float data: cast to a float input's precision, or quantize for a quantized input
                array = array.astype(want) if spec.quantization is None else quantize(array, spec)
            runtime_feeds[spec.name] = array
        try:
            with self._lock:
                outputs = self.runtime.run(runtime_feeds)
        except EdgefleetError as exc:
            raise InferenceError(str(exc)) from None
        if not raw:
            for spec in self._quantized_outputs:
                outputs[spec.name] = dequantize(outputs[spec.name], spec)
        return outputs

    def _input_names(self) -> str:
        return ", ".join(f"{s.name} {s.dtype}{list(s.shape)}" for s in self.manifest.inputs)

    def classify(self, outputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
        """(top-1 index, confidence) per sample for classification bundles, else None."""
        name = self._class_output
        if name is None:
            return None
        scores = np.asarray(outputs[name], dtype=np.float32).reshape(len(outputs[name]), -1)
        return scores.argmax(axis=1), scores.max(axis=1)

    def selftest_reference(self) -> Reference:
        """The bundle's decoded self-test (device_agent/selftest.py); decoded once.

        Raises:
            SelfTestError: no self-test, or an unreadable one.
        """
        from device_agent.selftest import decode

        with self._lock:
            if self._reference is None:
                self._reference = decode(self._selftest_npz, self.manifest)
            return self._reference

    def selftest_samples(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The bundle's reference (inputs, expected raw outputs), samples along axis 0; the expected
        outputs are empty for a compact self-test, which keeps only a subsample of them."""
        ref = self.selftest_reference()
        return ref.inputs, ref.full

    def selftest(self) -> SelfTestResult:
        """Run the reference inputs and compare with the reference outputs within the bundle's tolerances."""
        from device_agent.selftest import SelfTestResult, judge

        if self.manifest.selftest is None:
            return SelfTestResult(True, 0.0, None, "no self-test in bundle")
        try:
            ref = self.selftest_reference()
            n = len(next(iter(ref.inputs.values())))
            got: dict[str, list[np.ndarray]] = {s.name: [] for s in self.manifest.outputs}
            for i in range(n):
                sample = {s.name: take(s, ref.inputs[s.name], i) for s in self.manifest.inputs}
                for name, value in self.predict(sample, raw=True).items():
                    got[name].append(value)
        except (EdgefleetError, KeyError, ValueError, OSError) as exc:
            return SelfTestResult(False, float("inf"), None, f"self-test could not run: {exc}")
        return judge(self.manifest, ref, {name: join(parts) for name, parts in got.items()})
