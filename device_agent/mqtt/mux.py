"""Many MQTT connections on one thread: paho's external-loop API driven by one selector.

``MqttClient`` gives each connection paho's network thread, which is right for one device and
impossible for thousands in one process. ``MqttMux`` owns one thread that waits on every
connection's socket at once (``selectors``), calls paho's ``loop_read``/``loop_write`` for the
sockets that are ready and ``loop_misc`` (keepalive) once a second, and runs timers. All paho calls
happen on that thread; other threads hand it work with ``call_soon``/``call_later``.

A ``MuxClient`` with several broker URLs fails over like ``MqttClient``: an attempt that gets no
CONNACK moves it to the next node in the list for the next attempt (which the caller's backoff paces).

``MuxClient`` is an ``MqttClient`` whose calls do not block: ``connect`` returns at once and reports
through callbacks, ``publish`` queues (QoS 1 delivery and re-sending after a reconnect are paho's,
as with the threaded client). paho stays private: it is created by ``device_agent.mqtt``, the only
module that imports it; callbacks run on the mux thread and must not block.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from device_agent.errors import TransportError
from device_agent.mqtt.client import Message, MqttClient, MqttConfig, Will, _paho_client, _paho_connect

log = logging.getLogger("edge-agent.mux")
MISC_INTERVAL = 2.0  # seconds between keepalive sweeps over every connection (keepalives are 30 s or more)


class MqttMux:
    """One thread multiplexing many ``MuxClient`` connections, plus a timer queue."""

    def __init__(self, name: str = "mqtt-mux") -> None:
        self.name = name
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._ops: deque[Callable[[], None]] = deque()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._woken = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.clients: set[MuxClient] = set()
        self.errors = 0  # exceptions raised by callbacks (logged, never fatal)

    # --- scheduling (any thread) -----------------------------------------------------------------

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the mux thread, in submission order."""
        self._ops.append(fn)
        self._wake()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the mux thread after ``delay`` seconds."""
        with self._lock:
            heapq.heappush(self._timers, (time.monotonic() + max(0.0, delay), next(self._seq), fn))
        self._wake()

    def _wake(self) -> None:
        if self._woken or threading.current_thread() is self._thread:
            return
        self._woken = True
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop (connections are closed without DISCONNECT unless disconnected first)."""
        self._stop.set()
        self._woken = False
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        for client in list(self.clients):
            client._close_socket()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def run(self) -> None:
        """The loop: wait for sockets, ops or the next timer; until ``stop()``."""
        next_misc = time.monotonic() + MISC_INTERVAL
        while not self._stop.is_set():
            timeout = self._timeout(next_misc)
            for key, mask in self._selector.select(timeout):
                if key.data is None:
                    self._drain_wake()
                else:
                    self._guard(functools.partial(key.data._ready, mask))
            self._run_ops()
            self._run_timers()
            if time.monotonic() >= next_misc:
                for client in list(self.clients):
                    self._guard(client._misc)
                next_misc = time.monotonic() + MISC_INTERVAL

    def _timeout(self, next_misc: float) -> float:
        if self._ops:
            return 0.0
        now = time.monotonic()
        until = next_misc
        with self._lock:
            if self._timers:
                until = min(until, self._timers[0][0])
        return max(0.0, until - now)

    def _drain_wake(self) -> None:
        self._woken = False
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_r.recv(4096):
                pass

    def _run_ops(self) -> None:
        for _ in range(len(self._ops)):
            self._guard(self._ops.popleft())

    def _run_timers(self) -> None:
        now = time.monotonic()
        due = []
        with self._lock:
            while self._timers and self._timers[0][0] <= now:
                due.append(heapq.heappop(self._timers)[2])
        for fn in due:
            self._guard(fn)

    def _guard(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # one device's bad callback must not stop every other device
            self.errors += 1
            log.exception("mux callback failed")

    # --- sockets (mux thread) ------------------------------------------------------------------

    def _register(self, sock: Any, client: MuxClient, write: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if write else 0)
        try:
            self._selector.modify(sock, events, client)
        except KeyError:
            self._selector.register(sock, events, client)

    def _unregister(self, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(sock)


class MuxClient(MqttClient):
    """One connection on a ``MqttMux``. Nothing blocks; outcomes arrive as callbacks on the mux thread:

    - ``on_connect()`` after a successful CONNACK (subscribe and publish from there),
    - ``on_disconnect(reason)`` when a connection attempt fails or the connection is lost,
    - ``on_message(message)`` for every message received (acknowledge with ``ack`` when acted on).
    """

    def __init__(
        self,
        mux: MqttMux,
        config: MqttConfig,
        *,
        on_connect: Callable[[], None] = lambda: None,
        on_disconnect: Callable[[str], None] = lambda reason: None,
        on_message: Callable[[Message], None] = lambda message: None,
    ) -> None:
        super().__init__(config, max_queued=1)
        self.mux = mux
        self.on_connect, self.on_disconnect, self.on_message = on_connect, on_disconnect, on_message
        self._version = "3.1.1" if config.protocol == "3.1.1" else "5"
        if config.protocol not in ("auto", "5", "3.1.1"):
            raise TransportError(f"unknown MQTT protocol {config.protocol!r}")
        self._will: Will | None = None
        self._got_connack = False

    # --- the MqttClient interface, non-blocking (any thread) -----------------------------------

    def connect(self, will: Will | None = None) -> None:
        """Start connecting; ``on_connect`` or ``on_disconnect`` tells how it went."""
        self.mux.call_soon(lambda: self._open(will))

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, timeout: float = 10.0) -> None:
        """Queue a publish (``timeout`` is not waited for). Raises: TransportError when not connected."""
        client = self._require()
        self.mux.call_soon(lambda: client.publish(topic, payload, qos=qos, retain=retain))

    def subscribe(self, filters: Iterable[tuple[str, int]], timeout: float = 10.0) -> None:
        """Queue a subscription (it takes effect before anything published later on this connection)."""
        client, wanted = self._require(), list(filters)
        self.mux.call_soon(lambda: client.subscribe(wanted))

    def ack(self, message: Message) -> None:
        client = self._client
        if client is not None and message.qos > 0 and self.config.manual_ack:
            self.mux.call_soon(lambda: client.ack(message.mid, message.qos))

    def abort(self) -> None:
        """Drop the connection without DISCONNECT (the broker publishes the will); ``on_disconnect`` follows."""
        self._connected.clear()
        self.mux.call_soon(self._shutdown_socket)

    def disconnect(self) -> None:
        """Send DISCONNECT and close (the broker publishes no will)."""
        self._connected.clear()
        self.mux.call_soon(self._goodbye)

    # --- mux thread ------------------------------------------------------------------------------

    def _open(self, will: Will | None) -> None:
        self._will = will if will is not None else self._will
        self._got_connack = False
        self.mux.clients.add(self)
        try:
            node = (self.broker.host, self.broker.port)
            if self._client is not None and (self._client.host, self._client.port) != node:
                # failover: paho takes no new host for a connection it still calls open, so a new client; QoS 1
                # messages it queued while offline are lost (the broker's session keeps what it acknowledged)
                self._close_socket()
                self._client = None
            if self._client is None:
                self._client = self._new_paho()
                _paho_connect(self._client, self.config, self.broker, self._version)
            else:  # the same paho client: QoS 1 messages not yet acknowledged are sent again
                self._client.on_disconnect = self._on_disconnect
                self._client.reconnect()
        except (OSError, ValueError) as exc:
            self._close_socket()
            self._report_lost(f"cannot reach broker {self.broker}: {exc}")

    def _new_paho(self) -> Any:
        client = _paho_client(self.config, self.broker, self._version, self._will)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_socket_open = lambda c, u, sock: self.mux._register(sock, self, False)
        client.on_socket_close = lambda c, u, sock: self.mux._unregister(sock)
        client.on_socket_register_write = lambda c, u, sock: self.mux._register(sock, self, True)
        client.on_socket_unregister_write = lambda c, u, sock: self.mux._register(sock, self, False)
        return client

    def _ready(self, mask: int) -> None:
        client = self._client
        if client is None:
            return
        if mask & selectors.EVENT_READ:
            client.loop_read()
        if mask & selectors.EVENT_WRITE and client.socket() is not None:
            client.loop_write()

    def _misc(self) -> None:
        if self._client is not None and self._client.socket() is not None:
            self._client.loop_misc()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._got_connack = True
        if reason.is_failure:
            log.warning("broker %s refused %s: %s", self.broker, self.config.client_id, reason)
            self._shutdown_socket()  # paho reports the lost connection next
            if self.config.protocol == "auto" and self._version == "5" and "protocol version" in str(reason).lower():
                self._version, self._client = "3.1.1", None  # a 3.1.1-only broker that says so (NATS)
            return
        self._connected.set()
        self.on_connect()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not self._got_connack and self.config.protocol == "auto" and self._version == "5":
            self._version, self._client = "3.1.1", None  # a 3.1.1-only broker: try that next time
            self._got_connack = True  # (the same node again, with 3.1.1)
        self._report_lost(f"connection lost: {reason}")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.on_message(Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), msg.mid))

    def _report_lost(self, reason: str) -> None:
        if not self._got_connack and len(self.brokers) > 1:  # this node did not answer: the next one next time
            self.broker_index = (self.broker_index + 1) % len(self.brokers)
            self.broker = self.brokers[self.broker_index]
            self.failovers += 1
        self._connected.clear()
        self.mux.clients.discard(self)
        self.on_disconnect(reason)

    def _shutdown_socket(self) -> None:
        sock = self._client.socket() if self._client is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # paho reads EOF next: connection lost, no DISCONNECT sent

    def _goodbye(self) -> None:
        client = self._client
        if client is not None and client.socket() is not None:
            client.on_disconnect = None  # asked for: no on_disconnect callback
            client.disconnect()
            with contextlib.suppress(Exception):
                client.loop_write()
            self._close_socket()
        self.mux.clients.discard(self)

    def _close_socket(self) -> None:
        sock = self._client.socket() if self._client is not None else None
        if sock is not None:
            self.mux._unregister(sock)
            with contextlib.suppress(OSError):
                sock.close()
