"""A lean MQTT 3.1.1 reader for the telemetry stream: whole socket reads, packets parsed in bulk.

Hand-written on purpose (the one place in edgefleet that speaks MQTT without paho): paho reads every
packet with a ``select`` and three or four ``recv`` calls and builds a message object and a callback
call per packet, which bounds a Python consumer to ~20,000 msgs/s on a quiet core, below the fleet's
ingest target; the asyncio clients (aiomqtt wraps paho; amqtt) cost more, not less. This reader does
only what a telemetry subscriber needs — CONNECT, one SUBSCRIBE, PINGREQ, PUBLISH in (QoS 0, or QoS 1
acknowledged at once) — and hands messages over in batches of whatever one ``recv`` returned.
Commands, events and retained state stay on ``device_agent.mqtt`` (paho), which does everything else.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import time
from collections.abc import Callable

from device_agent.errors import TransportError
from device_agent.mqtt import BrokerURL, Message

log = logging.getLogger(__name__)
RECV_BYTES = 256 * 1024  # one read takes whatever the kernel has, up to this
MAX_PACKET = 1 << 20  # bytes: a larger packet ends the connection (telemetry is capped at 8 KiB)


def _utf8(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def _packet(first: int, body: bytes) -> bytes:
    length, out = len(body), bytearray([first])
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out) + body


def _length(buf: bytes, at: int, end: int) -> tuple[int, int]:
    """A packet's remaining length (MQTT's variable-length integer) at ``buf[at]`` and where its body
    starts; (-1, 0) when the buffer ends first. Raises: TransportError on more than 4 length bytes."""
    length, mult = 0, 1
    for i in range(at, min(end, at + 4)):
        byte = buf[i]
        length += (byte & 0x7F) * mult
        if not byte & 0x80:
            return length, i + 1
        mult *= 128
    if end - at >= 4:
        raise TransportError("malformed packet length on the telemetry stream")
    return -1, 0


class TelemetryStream:
    """One MQTT 3.1.1 connection subscribed to some filters; ``read()`` returns the next batch."""

    def __init__(
        self,
        broker: BrokerURL,
        client_id: str,
        *,
        username: str | None = None,
        password: str | None = None,
        cafile: str | None = None,
        keepalive: int = 30,  # seconds
    ) -> None:
        self.broker, self.client_id, self.keepalive = broker, client_id, keepalive
        self.username = username or broker.username
        self.password = password or broker.password
        self.cafile = cafile
        self._sock: socket.socket | None = None
        self._buf = b""
        self._last_sent = 0.0
        self._topics: dict[bytes, str] = {}  # raw topic -> decoded (devices repeat theirs)

    def connect(self, filters: list[tuple[str, int]], timeout: float = 10.0) -> None:
        """Connect (clean session) and subscribe. Raises: TransportError."""
        try:
            sock = socket.create_connection((self.broker.host, self.broker.port), timeout=timeout)
            if self.broker.tls or self.cafile:
                context = ssl.create_default_context(cafile=self.cafile)
                sock = context.wrap_socket(sock, server_hostname=self.broker.host)
            self._sock, self._buf = sock, b""
            self._send(_packet(0x10, self._connect_body()))
            first, body = self._next_control(timeout)
            if first >> 4 != 2 or len(body) < 2 or body[1] != 0:
                raise TransportError(f"broker {self.broker} refused the telemetry stream (CONNACK {body.hex()})")
            topics = b"".join(_utf8(f) + bytes([min(q, 1)]) for f, q in filters)
            self._send(_packet(0x82, struct.pack("!H", 1) + topics))
            first, body = self._next_control(timeout)
            if first >> 4 != 9 or any(code == 0x80 for code in body[2:]):
                raise TransportError(f"broker {self.broker} refused the telemetry subscription")
            sock.settimeout(1.0)
        except OSError as exc:
            self.close()
            raise TransportError(f"cannot reach broker {self.broker}: {exc}") from None

    def _connect_body(self) -> bytes:
        flags = 0x02 | (0x80 if self.username else 0) | (0x40 if self.password else 0)
        body = _utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", self.keepalive) + _utf8(self.client_id)
        if self.username:
            body += _utf8(self.username)
        if self.password:
            body += _utf8(self.password)
        return body

    def _send(self, data: bytes) -> None:
        assert self._sock is not None
        self._sock.sendall(data)
        self._last_sent = time.monotonic()

    def _next_control(self, timeout: float) -> tuple[int, bytes]:
        """The next packet during the handshake (nothing else arrives before the SUBACK)."""
        deadline = time.monotonic() + timeout
        while True:
            packets = self._split()
            if packets:
                first, body = packets[0]
                return first, body
            if time.monotonic() > deadline:
                raise TransportError(f"broker {self.broker} did not answer in time")
            self._fill()

    def _fill(self) -> bool:
        """Read what the kernel has; False on a timeout. Raises: TransportError when the connection ends."""
        assert self._sock is not None
        try:
            data = self._sock.recv(RECV_BYTES)
        except TimeoutError:
            return False
        except OSError as exc:
            raise TransportError(f"telemetry stream lost: {exc}") from None
        if not data:
            raise TransportError(f"broker {self.broker} closed the telemetry stream")
        self._buf = self._buf + data if self._buf else data
        return True

    def _split(self) -> list[tuple[int, bytes]]:
        """Every complete packet in the buffer as (first byte, body); the rest stays buffered."""
        buf, pos, end = self._buf, 0, len(self._buf)
        out: list[tuple[int, bytes]] = []
        while end - pos >= 2:
            length, mult, i = 0, 1, pos + 1
            while True:
                if i >= end:
                    self._buf = buf[pos:]
                    return out
                byte = buf[i]
                length += (byte & 0x7F) * mult
                mult *= 128
                i += 1
                if not byte & 0x80:
                    break
                if mult > 128**3:
                    raise TransportError("malformed packet length on the telemetry stream")
            if length > MAX_PACKET:
                raise TransportError(f"a {length}-byte packet on the telemetry stream")
            if i + length > end:
                break
            out.append((buf[pos], buf[i : i + length]))
            pos = i + length
        self._buf = buf[pos:]
        return out

    def read(self) -> list[Message]:
        """The PUBLISH messages of the next read (maybe none, after at most a second); answers pings.

        One pass over the buffer, packets sliced straight into messages (no intermediate packet list,
        the usual 1- and 2-byte lengths decoded inline), QoS 1 acknowledged in one send per read.

        Raises:
            TransportError: the connection ended or the broker sent something malformed.
        """
        if self._sock is None:
            raise TransportError("telemetry stream not connected")
        if time.monotonic() - self._last_sent > self.keepalive / 2:
            self._send(b"\xc0\x00")  # PINGREQ
        return self._publishes() if self._fill() else []

    def _publishes(self) -> list[Message]:
        """The buffer's complete PUBLISH packets as messages (the rest stays buffered)."""
        buf, pos, end = self._buf, 0, len(self._buf)
        messages: list[Message] = []
        acks: list[bytes] = []
        topics = self._topics
        while end - pos >= 2:
            first, byte = buf[pos], buf[pos + 1]
            if byte < 0x80:
                length, i = byte, pos + 2
            elif end - pos >= 3 and buf[pos + 2] < 0x80:
                length, i = (byte & 0x7F) | (buf[pos + 2] << 7), pos + 3
            else:
                length, i = _length(buf, pos + 1, end)
                if length < 0:
                    break
            if length > MAX_PACKET:
                raise TransportError(f"a {length}-byte packet on the telemetry stream")
            nxt = i + length
            if nxt > end:
                break
            pos = nxt
            if first >> 4 != 3:
                continue  # PINGRESP, SUBACK of a resubscription: nothing to do
            start = i + 2 + ((buf[i] << 8) | buf[i + 1])
            raw = buf[i + 2 : start]
            topic = topics.get(raw) or self._topic(raw)
            qos, mid = (first >> 1) & 3, 0
            if qos:
                mid = (buf[start] << 8) | buf[start + 1]
                acks.append(b"\x40\x02" + buf[start : start + 2])  # PUBACK at once: telemetry is at most once
                start += 2
            messages.append(Message(topic, buf[start:nxt], qos, bool(first & 1), mid))
        self._buf = buf[pos:]
        if acks:
            self._send(b"".join(acks))
        return messages

    def _topic(self, raw: bytes) -> str:
        """A topic not seen before, decoded and remembered (devices repeat theirs)."""
        if len(self._topics) > 500_000:
            self._topics.clear()
        topic = self._topics[raw] = raw.decode("utf-8", "replace")
        return topic

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.sendall(b"\xe0\x00")  # DISCONNECT
            sock.close()


def stream_pump(
    connect: Callable[[], TelemetryStream],
    handle: Callable[[list[Message]], None],
    flush: Callable[[], object],
    stop: Callable[[], bool],
    flush_interval: float = 2.0,
) -> None:
    """Read batches and hand them to ``handle`` until ``stop()``; ``flush()`` every ``flush_interval``
    seconds; a lost stream is connected again (``connect`` tries the broker list) after a pause."""
    stream: TelemetryStream | None = None
    next_flush = time.monotonic() + flush_interval
    failing = ""  # the last error logged: a broker that keeps refusing is one line, not one per retry
    while not stop():
        try:
            if stream is None:
                stream = connect()
                if failing:
                    log.warning("telemetry stream connected again")
                failing = ""
            batch = stream.read()
        except TransportError as exc:
            if str(exc) != failing:
                failing = str(exc)
                log.warning("telemetry stream: %s (retrying every 0.5 s)", failing)
            if stream is not None:
                stream.close()
            stream = None
            time.sleep(0.5)
            continue
        if batch:
            handle(batch)
        if time.monotonic() >= next_flush:
            flush()
            next_flush = time.monotonic() + flush_interval
    if stream is not None:
        stream.close()
    flush()


def connect_any(
    brokers: tuple[BrokerURL, ...], client_id: str, filters: list[tuple[str, int]], **auth: str | None
) -> TelemetryStream:
    """A connected stream on the first node that answers, in list order from the one picked by the
    client id's hash (as ``MqttClient`` does). Raises: TransportError naming every node tried."""
    from device_agent.mqtt.client import first_broker

    errors = []
    start = first_broker(client_id, len(brokers))
    for step in range(len(brokers)):
        stream = TelemetryStream(brokers[(start + step) % len(brokers)], client_id, **auth)  # type: ignore[arg-type]
        try:
            stream.connect(filters)
            return stream
        except TransportError as exc:
            errors.append(str(exc))
    raise TransportError("; ".join(errors))
