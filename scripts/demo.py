"""``make demo``: the whole edgefleet story on this machine, as the commands a user would type.

1. make a release key, build the digits-cnn reference model, quantize it to int8 (with its report);
2. package and sign digits 1.0.0 (float), 1.1.0 (int8) and 1.2.0 (the same int8 model, made bad on one
   sku by the simulator's fault injection: every inference there gets 50 ms slower);
3. start a broker (mosquitto when installed, else the embedded one), ``fleetctl serve`` and
   ``fleetctl simulate`` (N devices running the real agent code, over 3 skus);
4. roll 1.1.0 out in stages with live progress, then 1.2.0: the sku-c devices fail their latency
   gate, the rollout's failure gate trips and the fleet manager rolls every changed device back;
5. print a summary and where to look next.

Every process it starts lives in a process group of its own and is stopped (in reverse order,
SIGINT/SIGTERM, then SIGKILL) when the demo ends, fails, or gets Ctrl-C / SIGTERM; a second
Ctrl-C while stopping kills at once. Run ``python scripts/demo.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shlex
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from demo_support import (
    BAD_SKU,
    BIN,
    DEFAULT_WORKDIR,
    FLEET,
    ROOT,
    SKUS,
    TF_NOISE,
    DemoError,
    Options,
    Processes,
    interrupted,
    rel,
    say,
    show,
)

from fleet.broker import LocalBroker, free_port, start_local_broker
from fleet.client import ApiClient
from fleet.errors import ApiError

# --- the demo -----------------------------------------------------------------------------------


class Demo:
    def __init__(self, opts: Options, procs: Processes) -> None:
        self.opts, self.procs = opts, procs
        self.work = opts.workdir
        self.models = opts.models or self.work / "models"
        self.logs = self.work / "logs"
        self.token = f"demo-{secrets.token_hex(8)}"
        self.port = free_port()  # chosen now, so the console's address is known from the start
        self.broker: LocalBroker | None = None
        self.api = ApiClient("http://127.0.0.1:0")

    def path(self, name: str) -> str:
        return rel(self.work / name)

    def announce_console(self, up: bool = False) -> None:
        """The web console's address and the token to sign in with (an admin of this demo fleet only)."""
        when = "" if up else " (it answers once the fleet manager has started)"
        print(f"   web console: http://127.0.0.1:{self.port}/ui  sign in with the token {self.token}{when}", flush=True)

    def run(self, *argv: str, brief: bool = False) -> str:
        """Run one command in the foreground, show it and its output (TensorFlow's log noise dropped;
        only the first line with ``brief``).

        Raises: DemoError when it fails.
        """
        show(list(argv))
        program = [sys.executable, *argv[1:]] if argv[0] == "python" else [str(BIN / argv[0]), *argv[1:]]
        child = self.procs.spawn(argv[0], program, None)
        assert child.proc.stdout is not None
        lines: list[str] = []
        for line in child.proc.stdout:
            if not TF_NOISE.match(line):
                if not brief or not lines:
                    print(line, end="", flush=True)
                lines.append(line)
        if child.proc.wait() != 0:
            raise DemoError(f"`{shlex.join(argv)}` exited with status {child.proc.returncode}")
        self.procs.children.remove(child)
        return "".join(lines)

    def background(self, name: str, argv: list[str], stop_signal: int = signal.SIGTERM) -> None:
        show(argv, background=True)
        log = self.logs / f"{name}.log"
        self.procs.spawn(name, [str(BIN / argv[0]), *argv[1:]], log, stop_signal)
        print(f"   (its output goes to {rel(log)})", flush=True)

    # --- 1 and 2: the engineer ---------------------------------------------------------------

    def fresh_workdir(self) -> None:
        """Empty the work directory, but only one a previous demo made (or an empty one). Raises: DemoError."""
        marker = self.work / ".edgefleet-demo"
        if self.work.exists() and any(self.work.iterdir()):
            if not marker.exists() and self.work != DEFAULT_WORKDIR:
                raise DemoError(f"{self.work} exists and was not made by the demo: pick another --workdir")
            if self.opts.models is not None and self.opts.models.resolve().is_relative_to(self.work):
                raise DemoError("--models must not be inside --workdir (the demo empties it)")
            shutil.rmtree(self.work)
        self.logs.mkdir(parents=True)
        marker.write_text("made by scripts/demo.py; emptied by its next run\n")

    def build(self) -> None:
        self.fresh_workdir()
        say("the engineer: a release signing key")
        self.run("edgetool", "keygen", "--out", self.path("keys/release"))
        if self.opts.models is None:
            say("build the digits-cnn reference model (trained on scikit-learn's digits, offline)")
            self.run("python", "-m", "models", "build", "digits-cnn", "--out", rel(self.models))
        else:
            say(f"reuse the digits-cnn build in {rel(self.models)} (--models)")
        self.quantize()
        self.package_releases()

    def quantize(self) -> None:
        say("quantize it to int8 and measure what that cost")
        m = rel(self.models)
        self.run(
            "edgetool",
            "quantize",
            f"{m}/model.keras",
            "--format",
            "tflite",
            "--mode",
            "int8",
            "--calibration",
            f"{m}/calib.npz",
            "--eval",
            f"{m}/eval.npz",
            "-o",
            self.path("digits-int8.tflite"),
            "--report",
            self.path("report"),
        )

    def package_releases(self) -> None:
        say("package and sign three releases")
        m = rel(self.models)
        print(
            "   1.0.0 the float model (every device starts on it), 1.1.0 the int8 model, 1.2.0 the int8 model\n"
            f"   again: the bad release. Its badness is INJECTED by the simulator (--fault below): on sku\n"
            f"   {BAD_SKU!r} every inference of 1.2.0 is 50 ms slower, which its latency gate must catch.\n"
            "   --selftest-samples 128: simulated devices replay a bundle's self-test inputs, so that many\n"
            "   calibration samples keep their input drift (PSI) against the bundle's reference realistic."
        )
        int8, report = self.path("digits-int8.tflite"), ["--report", self.path("report/report.json")]
        for version, seq, model, extra in (
            ("1.0.0", 1, f"{m}/model.tflite", []),
            ("1.1.0", 2, int8, report),
            ("1.2.0", 3, int8, report),
        ):
            self.run(
                "edgetool",
                "package",
                model,
                "--name",
                "digits",
                "--version",
                version,
                "--sequence",
                str(seq),
                "--key",
                self.path("keys/release.key"),
                "--labels",
                f"{m}/labels.txt",
                "--calibration",
                f"{m}/calib.npz",
                "--selftest-samples",
                "128",
                *extra,
                "-o",
                self.path(f"digits-{version}.efb"),
                brief=version != "1.1.0",
            )
        self.run("edgetool", "verify", self.path("digits-1.2.0.efb"), "--trust", self.path("keys/release.pub"))

    # --- 3: broker, fleet manager, simulated fleet -------------------------------------------

    def start_fleet(self) -> None:
        self.start_broker()
        self.start_manager()
        self.start_devices()
        self.run("fleetctl", "releases", "add", self.path("digits-1.1.0.efb"))
        self.run("fleetctl", "releases", "add", self.path("digits-1.2.0.efb"))
        self.run("fleetctl", "releases", "check", "digits@1.1.0")

    def start_broker(self) -> None:
        say("start an MQTT broker")
        self.broker = start_local_broker(workdir=self.work / "broker", own_session=True)
        self.procs.adopt_broker(self.broker)
        if self.broker.kind == "mosquitto":
            show(["mosquitto", "-c", rel(self.broker.config_path or self.work)], background=True)
            print(f"   broker: mosquitto at {self.broker.url}", flush=True)
        else:
            show(["python", "-m", "fleet.embedded_broker", "--port", str(self.broker.port)], background=True)
            print(f"   broker: the embedded amqtt broker at {self.broker.url} (mosquitto is not installed)")

    def start_manager(self) -> None:
        assert self.broker is not None
        say("start the fleet manager")
        server = f"http://127.0.0.1:{self.port}"
        token_file = self.work / "bootstrap.token"  # the secret in a 0600 file, not on a command line (ps)
        token_file.write_text(f"demo={self.token}\n")
        token_file.chmod(0o600)
        self.background(
            "serve",
            [
                "fleetctl",
                "serve",
                "--db",
                f"sqlite:///{self.path('fleet.db')}",
                "--broker",
                self.broker.url,
                "--artifacts",
                self.path("artifacts"),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--trust",
                self.path("keys/release.pub"),
                "--fleet",
                FLEET,
                "--token-file",
                self.path("bootstrap.token"),
            ],
        )
        self.api = ApiClient(server, self.token)
        self.wait("the fleet manager to answer", 60, self._api_up)
        print(f"   the fleet manager answers at {server}", flush=True)
        self.announce_console(up=True)
        os.environ.update(FLEETCTL_SERVER=server, FLEETCTL_TOKEN=self.token)
        print(f"$ export FLEETCTL_SERVER={server} FLEETCTL_TOKEN={self.token}", flush=True)

    def start_devices(self) -> None:
        assert self.broker is not None
        say(f"start {self.opts.devices} simulated devices over skus {','.join(SKUS)} (real agent code each)")
        self.background(
            "simulate",
            [
                "fleetctl",
                "simulate",
                "--devices",
                str(self.opts.devices),
                "--fleet",
                FLEET,
                "--broker",
                self.broker.url,
                "--bundle",
                self.path("digits-1.0.0.efb"),
                "--trust",
                self.path("keys/release.pub"),
                "--skus",
                ",".join(SKUS),
                *self.fault_args(),
                "--telemetry-interval",
                f"{self.opts.telemetry_s:g}",
                "--workdir",
                self.path("devices"),
            ],
            stop_signal=signal.SIGINT,
        )
        self.wait(f"{self.opts.devices} devices online on digits 1.0.0", 300, self._fleet_online, every=5.0)

    def fault_args(self) -> list[str]:
        return ["--fault", f"digits@1.2.0:{BAD_SKU}=slow"]

    def _api_up(self) -> tuple[bool, str]:
        try:
            self.api.get("/health")
        except ApiError:  # not listening yet
            return False, ""
        return True, ""

    def _fleet_online(self) -> tuple[bool, str]:
        devices = self.api.get("/devices")
        ready = [d for d in devices if d["status"] == "online" and d["model_version"] == "1.0.0" and d["sku"]]
        skus = Counter(d["sku"] for d in ready)
        line = f"{len(ready)}/{self.opts.devices} devices online on 1.0.0, by sku: " + (
            " ".join(f"{k}×{v}" for k, v in sorted(skus.items())) or "-"
        )
        return len(ready) >= self.opts.devices, line

    def wait(self, what: str, timeout: float, probe: Callable[[], tuple[bool, str]], every: float = 0.5) -> None:
        """Poll ``probe`` → (done, progress line) until done, printing changed lines at most every
        ``every`` seconds. Raises: DemoError on timeout or when a background process died."""
        deadline, shown, last = time.monotonic() + timeout, "", 0.0
        while time.monotonic() < deadline:
            self.procs.check_alive()
            done, line = probe()
            if line and line != shown and (done or time.monotonic() - last >= every):
                print(f"   {line}", flush=True)
                shown, last = line, time.monotonic()
            if done:
                return
            time.sleep(0.5)
        raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}; logs in {rel(self.logs)}/")

    # --- 4: rollouts --------------------------------------------------------------------------

    def rollout(self, release: str, stages: str) -> dict[str, Any]:
        out = self.run(
            "fleetctl",
            "rollout",
            "start",
            release,
            "--stages",
            stages,
            "--max-concurrent",
            "10",
            "--bake",
            f"{self.opts.bake_s:g}",
            "--health-settle",
            f"{self.opts.settle_s:g}",
            "--health-interval",
            f"{self.opts.telemetry_s:g}",  # one evaluation per telemetry window
            "--min-p95-delta",
            "5",
        )
        match = re.search(r"rollout (\d+) started", out)
        if not match:
            raise DemoError(f"unexpected output of rollout start: {out!r}")
        rid = int(match.group(1))
        print(f"   live progress (what `fleetctl rollout status {rid}` and `fleetctl watch` show):", flush=True)
        started, last, shown = time.monotonic(), "", 0.0
        while True:
            self.procs.check_alive()
            status = self.api.get(f"/rollouts/{rid}")
            line = self._progress_line(status)
            if line != last or time.monotonic() - shown > 10:
                print(f"   [{time.monotonic() - started:5.1f}s] {line}", flush=True)
                last, shown = line, time.monotonic()
            if status["state"] not in ("RUNNING", "PAUSED", "WAITING_APPROVAL"):
                return status  # type: ignore[no-any-return]
            if time.monotonic() - started > 600:
                raise DemoError(f"rollout {rid} still {status['state']} after 600 s; logs in {rel(self.logs)}/")
            time.sleep(0.5)

    def _progress_line(self, status: dict[str, Any]) -> str:
        stage, targets = status["stage"], status["targets"]
        counts = {k: v for k, v in sorted(status["progress"].items()) if k != "targeted"}
        versions = Counter(d["model_version"] for d in self.api.get("/devices"))
        fleet = " ".join(f"{v}×{n}" for v, n in sorted(versions.items()))
        deps = " ".join(f"{k}={v}" for k, v in counts.items()) or "-"
        size = f"{targets[stage]} devices" if targets else "no devices"
        return (
            f"{status['state']:<9} stage {stage + 1}/{len(status['stages'])} ({status['stages'][stage]}: {size})"
            f" {status['phase']:<9} deployments {deps} | fleet {fleet}"
        )

    def rollouts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        say("the operator: roll 1.1.0 out in stages (10%, then 50%, then all), gated on health")
        print(
            "   each stage: install success/failure thresholds, then a bake during which the updated devices'\n"
            "   error rate, p95 latency, drift and confidence are compared with not-yet-updated ones of the same\n"
            "   sku (--min-p95-delta 5: the simulated devices share one process, their sub-ms p95 jitters by ms)"
        )
        good = self.rollout("digits@1.1.0", "10,50,100")
        if good["state"] != "SUCCEEDED":
            raise DemoError(f"rollout of 1.1.0 ended {good['state']}: {good['reason']}")
        say("roll out 1.2.0, the release with the injected fault on sku " + repr(BAD_SKU))
        bad = self.rollout("digits@1.2.0", "10,50,100")
        if bad["state"] != "ABORTED":
            raise DemoError(f"rollout of 1.2.0 ended {bad['state']}, expected the gate to abort it")
        print("   the gate tripped: the fleet manager aborted the rollout and rolls back every device it changed")
        self.wait("every rolled-back device to report its previous version", 180, self._none_on("1.2.0"), every=3.0)
        self.run("fleetctl", "rollout", "status", str(bad["id"]))
        return good, bad

    def _none_on(self, version: str) -> Callable[[], tuple[bool, str]]:
        def probe() -> tuple[bool, str]:
            versions = Counter(d["model_version"] for d in self.api.get("/devices"))
            return version not in versions, "fleet " + " ".join(f"{v}×{n}" for v, n in sorted(versions.items()))

        return probe

    # --- 5: summary ---------------------------------------------------------------------------

    def summary(self, good: dict[str, Any], bad: dict[str, Any]) -> None:
        say("summary")
        devices = self.api.get("/devices")
        per_sku = Counter((d["sku"], d["model_version"]) for d in devices)
        print(
            f"   devices: {len(devices)}; final versions by sku: "
            + ", ".join(f"{sku} → {v} ×{n}" for (sku, v), n in sorted(per_sku.items()))
        )
        print(f"   rollout {good['id']} digits@1.1.0: {good['state']} ({good['reason']})")
        for dep in self.api.get(f"/rollouts/{good['id']}/deployments"):
            if dep["state"] != "SUCCEEDED":  # tolerated by the failure threshold; say why it happened
                print(f"     {dep['device_id']}: {dep['state']} [{dep['reason']}] {dep['detail']}")
        print(f"   rollout {bad['id']} digits@1.2.0: {bad['state']}, automatic rollback because: {bad['reason']}")
        skus = {d["id"]: d["sku"] for d in devices}
        outcomes = Counter(
            (skus.get(d["device_id"]), d["state"], d["reason"] or "-")
            for d in self.api.get(f"/rollouts/{bad['id']}/deployments")
        )
        for (sku, state, reason), n in sorted(outcomes.items()):
            why = "the device's own gate" if reason.startswith("probation") else "the fleet manager's cmd/rollback"
            print(f"     sku {sku}: {n} device(s) {state} [{reason}] by {why}")
        for dep in self.api.get(f"/rollouts/{bad['id']}/deployments"):
            if dep["reason"].startswith("probation"):
                print(f"     e.g. {dep['device_id']}: {dep['detail']}")
                break
        assert self.broker is not None
        b, server = self.broker, f"http://127.0.0.1:{self.port}"
        say("where to look next" + ("" if self.opts.keep_running else " (rerun with --keep-running to explore live)"))
        print(
            f"   web console:          {server}/ui (token {self.token})\n"
            f"   API docs (OpenAPI):   {server}/docs\n"
            f"   Prometheus metrics:   {server}/metrics\n"
            f"   live rollout view:    FLEETCTL_SERVER={server} fleetctl watch\n"
            f"   MQTT topics:          edgefleet/v1/{FLEET}/DEVICE/{{status,info,telemetry,events/deployment,cmd/…}}\n"
            f"   telemetry stream:     mosquitto_sub -h {b.host} -p {b.port} -t 'edgefleet/v1/{FLEET}/+/telemetry' -v\n"
            f"   deployment events:    mosquitto_sub -h {b.host} -p {b.port}"
            f" -t 'edgefleet/v1/{FLEET}/+/events/deployment' -v\n"
            f"   logs and device homes: {rel(self.logs)}/, {self.path('devices')}/\n"
            "   dashboards: dashboards/ (Grafana, Telegraf, Node-RED); docs: README.md, docs/architecture.md",
            flush=True,
        )

    def story(self) -> None:
        good, bad = self.rollouts()
        self.summary(good, bad)

    def keep_running(self) -> None:
        """Until Ctrl-C (the normal end here, so not an interruption). Raises: DemoError if a process dies."""
        print("\neverything keeps running (--keep-running); Ctrl-C stops it all.", flush=True)
        try:
            while True:
                self.procs.check_alive()
                time.sleep(1.0)
        except KeyboardInterrupt:
            print("\nstopping every process the demo started", flush=True)


def parse(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=None, help="simulated devices (default 50, 12 with --fast)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="default build/demo")
    parser.add_argument("--keep-running", action="store_true", help="leave everything running after the summary")
    parser.add_argument("--fast", action="store_true", help="fewer devices and shorter bake times (tests)")
    parser.add_argument(
        "--models",
        type=Path,
        help="reuse a model build (`python -m models build` output: digits-cnn; tiny-digits with --loop)",
    )
    parser.add_argument("--loop", action="store_true", help="the field data loop instead (capture, recalibrate)")
    args = parser.parse_args(argv)
    devices = args.devices if args.devices is not None else (12 if args.fast else 50)
    if devices < len(SKUS):
        parser.error(f"--devices must be at least {len(SKUS)} (one per sku)")
    return Options(devices, args.workdir.resolve(), args.keep_running, args.fast, args.models, args.loop)


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    os.chdir(ROOT)  # every command is shown as typed in the repository root
    procs = Processes()
    signal.signal(signal.SIGTERM, interrupted)
    started = time.monotonic()
    try:
        if opts.loop:
            from demo_loop import LoopDemo  # it imports this module
        demo = LoopDemo(opts, procs) if opts.loop else Demo(opts, procs)
        demo.announce_console()
        demo.build()
        demo.start_fleet()
        demo.story()
        if opts.keep_running:
            demo.keep_running()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process the demo started", flush=True)
        return 130
    except DemoError as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        procs.stop_all()
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s; every process it started has stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
