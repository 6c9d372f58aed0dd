"""``fleetctl serve``: one process with the store, MQTT ingest, the rollout runner and the HTTP API.

Shutdown is warm: SIGTERM/SIGINT stop uvicorn, then the runner finishes its step, the ingest flushes
its rollups, and the MQTT session is left for the broker to keep (so events queue while we are away).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import secrets
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from device_agent.bundle import TrustStore
from device_agent.errors import EdgefleetError
from device_agent.mqtt import MqttClient, MqttConfig
from fleet.access import parse_duration
from fleet.api import create_app
from fleet.capture import FleetCapture
from fleet.cluster import Membership, keep_connected
from fleet.errors import FleetConfigError
from fleet.ingest import Ingest, IngestConfig, subscriptions
from fleet.mqtt_stream import TelemetryStream
from fleet.rollout.runner import Runner
from fleet.service import FleetService
from fleet.store import Store
from fleet.trust import FleetTrust

log = logging.getLogger("fleetctl.serve")


@dataclass(frozen=True)
class ServeConfig:
    db: str
    broker: str
    artifacts: Path
    trust: tuple[Path, ...] = ()  # plain release keys; or:
    trust_metadata: Path | None = None  # signed trust.json (then `fleetctl trust push` can rotate keys)
    host: str = "127.0.0.1"
    port: int = 8080
    fleet: str = "default"
    tokens: dict[str, str] = field(default_factory=dict)  # bootstrap admin tokens: secret -> name
    public_url: str | None = None  # how devices reach the artifacts; default http://HOST:PORT
    tick_interval: float = 0.5  # seconds between rollout steps
    session_expiry: int = 3600  # seconds the broker keeps our MQTT session (and queued events) while we are down
    ingest_only: bool = False  # a follower: shares telemetry ingest (MQTT 5 $share), runs no rollouts
    instance: str = "main"  # distinguishes processes of one fleet (MQTT client id fleetctl-FLEET-INSTANCE)
    lease_ttl: float = 10.0  # seconds before another process takes over rollouts from a silent leader
    broker_protocol: str = "auto"  # "auto" (MQTT 5, else 3.1.1), "5" or "3.1.1"
    ingest_stream: str = "paho"  # "lean": telemetry through fleet/mqtt_stream.py's reader (a 2nd connection)
    broker_username: str | None = None  # default: the broker URL's
    broker_password: str | None = None
    broker_cafile: Path | None = None  # CA for mqtts:// with a private CA
    admission: str = "auto"  # "manual": devices that first speak are pending until an admin accepts them
    max_devices: int | None = None  # devices the fleet registers at most (None: no cap)
    public_metrics: bool = False  # serve /metrics without a token
    download_ttl_s: float = 6 * 3600.0  # seconds a signed artifact URL in cmd/deploy stays valid
    capture_retention: str = "90d"  # how long captured samples are kept
    capture_max_gb: float = 10.0  # captured samples kept at most (GiB; the oldest go first)


PUMP_BATCH = 1000  # messages handled per store transaction at most
CAPTURE_TICK_S = 5.0  # seconds between capture policy deliveries and retention passes


def pump(client: MqttClient, ingest: Ingest, stop: threading.Event) -> None:
    """Feed received messages to the ingest, as many as are waiting (up to ``PUMP_BATCH``) per store
    transaction; flush rollups every ``flush_interval_s``."""
    interval = ingest.config.flush_interval_s
    next_flush = ingest.clock() + interval
    while not stop.is_set():
        batch = []
        with contextlib.suppress(queue.Empty):
            batch.append(client.messages.get(timeout=0.2))
            while len(batch) < PUMP_BATCH:
                batch.append(client.messages.get_nowait())
        if batch:
            ingest.handle_many(batch)
        if ingest.clock() >= next_flush:
            ingest.flush()
            next_flush = ingest.clock() + interval
    ingest.flush()


def _exit_warmly(signum: int, frame: object) -> None:
    raise SystemExit(0)


class FleetServer:
    """Wires the parts together; ``run()`` blocks until a signal."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        if config.admission not in ("auto", "manual"):
            raise FleetConfigError(f"admission must be auto or manual, not {config.admission[:20]!r}")
        self.tokens = config.tokens or {secrets.token_urlsafe(32): "bootstrap"}
        self.store = Store(config.db)
        self.store.devices.admission = "pending" if config.admission == "manual" else "accepted"
        self.store.devices.max_devices = config.max_devices
        self.ingest = Ingest(self.store, IngestConfig(fleet=config.fleet))
        self.mqtt = MqttClient(
            MqttConfig(
                url=config.broker,
                client_id=f"fleetctl-{config.fleet}-{config.instance}",
                username=config.broker_username,
                password=config.broker_password,
                cafile=str(config.broker_cafile) if config.broker_cafile else None,
                # a follower keeps no session: the broker would go on handing a stopped member its share
                # of the $share telemetry group (and drop it) until the session expired
                clean_start=config.ingest_only,
                session_expiry_s=0 if config.ingest_only else config.session_expiry,
                protocol=config.broker_protocol,
            ),
            max_queued=100_000,
        )
        self.service = self._service(config)
        public = config.public_url or f"http://{config.host}:{config.port}"
        self.signer = self.service.signer(config.download_ttl_s)
        self.runner = Runner(
            self.service,
            self.mqtt,
            public,
            holder=f"{config.fleet}/{config.instance}",
            lease_ttl=config.lease_ttl,
            signer=self.signer,
        )
        self.service.capture = self._capture(config, public)
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.membership: Membership | None = None  # set when ingest is partitioned (no shared subscriptions)

    def _capture(self, config: ServeConfig, public: str) -> FleetCapture:
        def publish(messages: list[tuple[str, bytes]]) -> None:
            self.mqtt.publish_many(messages, qos=1, timeout=30.0 + len(messages) / 100, retain=True)

        capture = FleetCapture.create(self.store, config.fleet, config.artifacts, public, publish)
        capture.max_age_s = parse_duration(config.capture_retention)
        capture.max_bytes = int(config.capture_max_gb * 2**30)
        return capture

    def _capture_loop(self) -> None:
        """Deliver capture policies to devices that appeared or changed; apply retention."""
        capture = self.service.capture
        while capture is not None and not self.stop.wait(CAPTURE_TICK_S):
            try:
                capture.tick(time.time())
            except (EdgefleetError, OSError) as exc:  # the broker or the store is away: next tick
                log.warning("capture: %s", exc)

    def _service(self, config: ServeConfig) -> FleetService:
        """The service, trusting the release keys of --trust-metadata (walked to the newest stored
        version) or the plain keys of --trust."""
        if config.trust_metadata is None:
            if not config.trust:
                raise FleetConfigError("give --trust KEY.pub or --trust-metadata trust.json")
            trust = TrustStore.from_paths([str(p) for p in config.trust])
            return FleetService(self.store, self.ingest, trust, config.artifacts)
        if config.trust:
            raise FleetConfigError("--trust and --trust-metadata exclude each other")
        try:
            provisioned = config.trust_metadata.read_bytes()
        except OSError as exc:
            raise FleetConfigError(f"cannot read {config.trust_metadata}: {exc.strerror}") from None

        def publish(messages: list[tuple[str, bytes]]) -> None:
            self.mqtt.publish_many(messages, qos=1, timeout=30.0 + len(messages) / 100, retain=True)

        fleet_trust = FleetTrust.load(self.store, config.fleet, provisioned, publish)
        service = FleetService(self.store, self.ingest, fleet_trust.metadata.release_store(), config.artifacts)
        service.fleet_trust = fleet_trust
        return service

    def start_background(self) -> None:
        """Connect to the broker, subscribe, start the ingest pump and the rollout runner.

        Raises:
            TransportError: the broker is unreachable.
        """
        self.mqtt.connect()
        filters = subscriptions(self.config.fleet, self.mqtt.protocol_version)
        parts: list[tuple[str, Callable[[], None]]] = [("ingest", lambda: pump(self.mqtt, self.ingest, self.stop))]
        if self.mqtt.protocol_version != "5":  # no $share: every manager gets all, each stores its partition
            parts.append(("members", self._partition()))
        elif self.config.ingest_only:
            filters = [f for f in filters if f[0].startswith("$share/")]
        if self.config.ingest_stream == "lean":
            telemetry = [f for f in filters if f[0].endswith("/telemetry")]
            filters = [f for f in filters if f not in telemetry]
            parts.append(("telemetry", self._lean_stream(telemetry)))
        self.mqtt.subscribe(filters)
        parts.append(("broker", lambda: keep_connected(self.mqtt, filters, self.stop)))
        if not self.config.ingest_only:
            parts.append(("runner", lambda: self.runner.run(self.stop, self.config.tick_interval)))
            parts.append(("capture", self._capture_loop))
        for name, target in parts:
            thread = threading.Thread(target=target, name=f"fleetctl-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def _lean_stream(self, filters: list[tuple[str, int]]) -> Callable[[], None]:
        """The telemetry reader loop on its own connection (client id ``…-telemetry``, clean session)."""
        from device_agent.mqtt import parse_brokers
        from fleet.mqtt_stream import connect_any, stream_pump

        c, brokers = self.config, parse_brokers(self.config.broker)
        client_id = f"fleetctl-{c.fleet}-{c.instance}-telemetry"
        auth = {"username": c.broker_username, "password": c.broker_password}
        auth["cafile"] = str(c.broker_cafile) if c.broker_cafile else None

        # the first connection now, as paho's subscription is made: subscribed before serve starts
        # (no telemetry lost at start-up), and an unreachable broker is serve's error, not a silent retry
        first = [connect_any(brokers, client_id, filters, **auth)]

        def connect() -> TelemetryStream:
            return first.pop() if first else connect_any(brokers, client_id, filters, **auth)

        return lambda: stream_pump(connect, self.ingest.handle_many, self.ingest.flush, self.stop.is_set)

    def _partition(self) -> Callable[[], None]:
        """Join the fleet's members (fleet/cluster.py) and store only our partition of telemetry; returns
        the heartbeat loop to run."""
        c = self.config
        membership = self.membership = Membership(self.store.leases, c.fleet, c.instance, c.lease_ttl)
        membership.heartbeat()
        self.ingest.owns = membership.partition.owns
        return lambda: membership.run(self.stop)

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM, then tear down warmly."""
        import uvicorn

        app = create_app(self.service, self.tokens, public_metrics=self.config.public_metrics, signer=self.signer)
        server = uvicorn.Server(
            uvicorn.Config(app, host=self.config.host, port=self.config.port, log_level="warning", access_log=False)
        )
        for sig in (signal.SIGTERM, signal.SIGINT):  # uvicorn re-raises the signal it caught once it has
            signal.signal(sig, _exit_warmly)  # stopped: make that an exit that runs our `finally` blocks
        try:
            self.start_background()
            log.warning(
                "fleetctl serving fleet %s on http://%s:%s (broker %s, MQTT %s%s)",
                self.config.fleet,
                self.config.host,
                self.config.port,
                f"{self.mqtt.broker} of {len(self.mqtt.brokers)}",  # no credentials from the URLs
                self.mqtt.protocol_version,
                ", ingest only" if self.config.ingest_only else "",
            )
            server.run()
        finally:
            self.teardown()

    def teardown(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)
        self.mqtt.disconnect()
        self.store.close()
