"""A small, blocking MQTT client over paho-mqtt 2.x: the only module in edgefleet that imports paho.

paho stays private; its return codes become ``TransportError`` at this boundary and no paho type
appears in a public signature. paho's callbacks only resolve events and enqueue messages; nothing
blocking runs on its network thread. Reconnection policy belongs to the caller's supervisor loop.
"""

from __future__ import annotations

import queue
import ssl
import threading
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_agent.config import BrokerSection
from device_agent.errors import ConfigError, TransportError

BROKER_OPTIONAL = ("username", "password", "cafile", "certfile", "keyfile")  # same names in [broker]
PROBE_TIMEOUT = 2.0  # seconds to wait for an MQTT 5 CONNACK before trying 3.1.1 ("auto")
MAX_BROKERS = 16  # URLs in one comma-separated broker list at most


@dataclass(frozen=True)
class BrokerURL:
    """``mqtt://[user:pass@]host[:1883]`` or ``mqtts://host[:8883]``."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerURL:
        """Raises: ConfigError for anything but an mqtt:// or mqtts:// URL with a host."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"bad broker URL {url!r}: {exc}") from None
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigError(f"broker URL {url!r} must look like mqtt://HOST:PORT or mqtts://HOST:PORT")
        tls = parts.scheme == "mqtts"
        return cls(
            host=parts.hostname,
            port=port or (8883 if tls else 1883),
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_brokers(urls: str) -> tuple[BrokerURL, ...]:
    """A comma-separated list of broker URLs (the nodes of one clustered broker), in order.

    Raises: ConfigError for an empty list, more than ``MAX_BROKERS`` URLs, or any bad URL.
    """
    parts = [u.strip() for u in urls.split(",")]
    if not urls.strip() or any(not u for u in parts):
        raise ConfigError(f"broker list {urls[:80]!r} has an empty URL")
    if len(parts) > MAX_BROKERS:
        raise ConfigError(f"broker list has {len(parts)} URLs; at most {MAX_BROKERS}")
    return tuple(BrokerURL.parse(u) for u in parts)


def first_broker(client_id: str, count: int) -> int:
    """The node a client tries first: a stable hash of its id, so a fleet spreads over the cluster's
    nodes (and a device goes back to the same node after a restart). crc32, not ``hash()``: the same
    in every process."""
    return zlib.crc32(client_id.encode()) % count if count > 1 else 0


@dataclass(frozen=True)
class MqttConfig:
    url: str
    client_id: str
    username: str | None = None
    password: str | None = None
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    keepalive: int = 30  # seconds
    connect_timeout: float = 10.0  # seconds
    protocol: str = "auto"  # "auto" (MQTT 5, falling back to 3.1.1), "5" or "3.1.1"
    clean_start: bool = False  # keep the session (and QoS 1 commands queued while offline)
    session_expiry_s: int = 7 * 24 * 3600  # MQTT 5: how long the broker keeps that session
    manual_ack: bool = False  # acknowledge QoS>0 messages only when the caller says it acted on them

    @classmethod
    def from_section(cls, section: BrokerSection, *, client_id: str, **client: Any) -> MqttConfig:
        """The settings of agent.toml's ``[broker]`` (empty strings: unset), by name, plus client-only ones."""
        optional: dict[str, Any] = {name: getattr(section, name) or None for name in BROKER_OPTIONAL}
        return cls(
            url=section.url,
            client_id=client_id,
            keepalive=section.keepalive_s,
            protocol=section.protocol,
            **optional,
            **client,
        )


class Message(NamedTuple):
    """One received message. A named tuple, not a frozen dataclass: it is built once per message on the
    fleet's ingest path, and a frozen dataclass costs several times as much to build (one
    ``object.__setattr__`` per field)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int = 0


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class MqttClient:
    """Connect, publish, subscribe; received messages land on ``self.messages`` (a bounded queue).

    ``config.url`` may list several nodes of one clustered broker, comma-separated. A client starts
    on the node picked by ``first_broker`` (a hash of its client id); ``connect()`` tries each node once,
    in list order from the current one, and stays on the first that answers. When a connection is lost
    the next ``connect()`` starts again from the node it was on; the caller's backoff paces the rounds.
    """

    def __init__(self, config: MqttConfig, *, max_queued: int = 10_000) -> None:
        self.config = config
        self.brokers = parse_brokers(config.url)
        self.broker_index = first_broker(config.client_id, len(self.brokers))
        self.broker = self.brokers[self.broker_index]
        self.failovers = 0  # connections made to another node than the previous one
        self.messages: queue.Queue[Message] = queue.Queue(maxsize=max_queued)
        self.dropped = 0  # messages dropped because the queue was full
        self.protocol_version: str | None = None
        self._connected = threading.Event()
        self._connack: threading.Event = threading.Event()
        self._connack_error: str | None = None
        self._subacked: set[int] = set()
        self._suback_cond = threading.Condition()
        self._client: Any = None

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    def connect(self, will: Will | None = None) -> None:
        """Connect and start the network thread.

        Raises:
            TransportError: the broker is unreachable, refuses us, or does not answer in time.
        """
        versions = {"auto": ["5", "3.1.1"], "5": ["5"], "3.1.1": ["3.1.1"]}.get(self.config.protocol)
        if versions is None:
            raise ConfigError(f"unknown MQTT protocol {self.config.protocol!r}")
        if self.protocol_version is not None:  # negotiated before: reconnect with the same version
            versions = [self.protocol_version]
        errors = []
        start = self.broker_index
        for step in range(len(self.brokers)):
            index = (start + step) % len(self.brokers)
            self.broker_index, self.broker = index, self.brokers[index]
            try:
                self._connect_versions(versions, will)
            except TransportError as exc:
                errors.append(str(exc))
                continue
            self.failovers += index != start
            return
        raise TransportError("; ".join(errors))

    def _connect_versions(self, versions: list[str], will: Will | None) -> None:
        """Connect to ``self.broker`` with the first protocol version it accepts. Raises: TransportError."""
        error = "no protocol version tried"
        for version in versions:
            # Some 3.1.1-only brokers (amqtt) never answer an MQTT 5 CONNECT: probe briefly.
            probing = len(versions) > 1 and version == "5"
            timeout = min(self.config.connect_timeout, PROBE_TIMEOUT) if probing else self.config.connect_timeout
            try:
                self._connect_once(version, will, timeout)
                self.protocol_version = version
                return
            except TransportError as exc:
                error = str(exc)
        raise TransportError(error)

    def _connect_once(self, version: str, will: Will | None, timeout: float) -> None:
        self.disconnect()  # a previous, lost connection: stop its network thread first
        client = _paho_client(self.config, self.broker, version, will)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._connack.clear()
        self._connack_error = None
        try:
            _paho_connect(client, self.config, self.broker, version)
        except (OSError, ValueError) as exc:
            raise TransportError(f"cannot reach broker {self.broker}: {exc}") from None
        client.loop_start()
        if not self._connack.wait(timeout) or self._connack_error:
            client.disconnect()
            _loop_stop(client)
            raise TransportError(self._connack_error or f"broker {self.broker} did not answer CONNECT in time")
        self._client = client

    # paho callbacks: set events, enqueue; never block.
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._connack_error = f"broker {self.broker} refused the connection: {reason}"
        else:
            self._connected.set()
        self._connack.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connected.clear()
        if not self._connack.is_set():  # closed before CONNACK (e.g. a 3.1.1-only broker refusing MQTT 5)
            self._connack_error = f"broker {self.broker} closed the connection before CONNACK: {reason}"
            self._connack.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            self.messages.put_nowait(Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), msg.mid))
        except queue.Full:
            self.dropped += 1

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        with self._suback_cond:
            self._subacked.add(mid)
            self._suback_cond.notify_all()

    def _require(self) -> Any:
        if self._client is None:
            raise TransportError("not connected")
        return self._client

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, timeout: float = 10.0) -> None:
        """Publish; for QoS ≥ 1 wait until the broker acknowledges.

        Raises:
            TransportError: not connected, or no acknowledgement within ``timeout`` seconds.
        """
        info = self._require().publish(topic, payload, qos=qos, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise TransportError(f"publish to {topic} failed: {paho.error_string(info.rc)}", rc=info.rc)
        if qos > 0:
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:
                raise TransportError(f"publish to {topic} failed: {exc}") from None
            if not info.is_published():
                raise TransportError(f"publish to {topic} not acknowledged within {timeout}s")

    def publish_many(
        self, messages: Iterable[tuple[str, bytes]], qos: int = 1, timeout: float = 30.0, retain: bool = False
    ) -> None:
        """Publish every (topic, payload), then wait until the broker acknowledged all of them (QoS ≥ 1):
        one round of waiting for a batch instead of one per message. ``retain``: the broker keeps each
        as its topic's retained message (delivered to a subscriber that connects later).

        Raises:
            TransportError: not connected, or not every message acknowledged within ``timeout`` seconds.
        """
        client = self._require()
        infos = []
        for topic, payload in messages:
            info = client.publish(topic, payload, qos=qos, retain=retain)
            if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_QUEUE_SIZE):
                raise TransportError(f"publish to {topic} failed: {paho.error_string(info.rc)}", rc=info.rc)
            infos.append(info)
        if qos == 0:
            return
        deadline = time.monotonic() + timeout
        for info in infos:
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                raise TransportError(f"publish failed: {exc}") from None
            if not info.is_published():
                raise TransportError(f"{len(infos)} publishes not all acknowledged within {timeout}s")

    def subscribe(self, filters: Iterable[tuple[str, int]], timeout: float = 10.0) -> None:
        """Subscribe and wait for the SUBACK. Raises: TransportError."""
        rc, mid = self._require().subscribe(list(filters))
        if rc != paho.MQTT_ERR_SUCCESS:
            raise TransportError(f"subscribe failed: {paho.error_string(rc)}", rc=rc)
        with self._suback_cond:  # the SUBACK may already have arrived: it is recorded, not lost
            if not self._suback_cond.wait_for(lambda: mid in self._subacked, timeout):
                raise TransportError(f"subscription not acknowledged within {timeout}s")
            self._subacked.discard(mid)

    def ack(self, message: Message) -> None:
        """Acknowledge a QoS>0 message received with ``manual_ack`` (after acting on it).

        An unacknowledged message is delivered again after a reconnect, so dying between receipt
        and action loses nothing.
        """
        client = self._client
        if client is not None and message.qos > 0 and self.config.manual_ack:
            client.ack(message.mid, message.qos)

    def abort(self) -> None:
        """Drop the connection without DISCONNECT, as a power cut or a cut cable would: the broker
        then publishes the last will."""
        client, self._client = self._client, None
        if client is not None:
            sock = client.socket()
            if sock is not None:
                sock.close()
            _loop_stop(client)
        self._connected.clear()

    def disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            _loop_stop(client)
        self._connected.clear()


def _loop_stop(client: Any) -> None:
    """``client.loop_stop()``, without paho's race: it checks ``_thread``, then joins it, and the network thread
    sets ``_thread`` to None as it ends, which after a DISCONNECT or a closed socket it does on its own. Ending
    between the two, loop_stop raised AttributeError ('NoneType' object has no attribute 'join', seen in CI);
    the thread we took a reference to first is joined instead."""
    thread = getattr(client, "_thread", None)
    try:
        client.loop_stop()
    except AttributeError:
        if thread is not None and thread is not threading.current_thread():
            thread.join()


def _paho_client(config: MqttConfig, broker: BrokerURL, version: str, will: Will | None) -> Any:
    """A configured paho client (not connected) for MQTT ``version`` "5" or "3.1.1"."""
    v5 = version == "5"
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=config.client_id,
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        clean_session=None if v5 else config.clean_start,
        reconnect_on_failure=False,  # the caller's supervisor owns the reconnection policy
        manual_ack=config.manual_ack,
    )
    username = config.username or broker.username
    if username:
        client.username_pw_set(username, config.password or broker.password)
    if broker.tls or config.cafile:
        client.tls_set(
            ca_certs=config.cafile,
            certfile=config.certfile,
            keyfile=config.keyfile,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    if will is not None:
        client.will_set(will.topic, will.payload, will.qos, will.retain)
    return client


def _paho_connect(client: Any, config: MqttConfig, broker: BrokerURL, version: str) -> None:
    """Open the TCP connection and send CONNECT. Raises: OSError, ValueError."""
    if version == "5":
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        # without it an MQTT 5 session (subscriptions, queued QoS 1 commands) ends at disconnect
        props.SessionExpiryInterval = 0 if config.clean_start else config.session_expiry_s
        client.connect(broker.host, broker.port, config.keepalive, clean_start=config.clean_start, properties=props)
    else:
        client.connect(broker.host, broker.port, config.keepalive)
