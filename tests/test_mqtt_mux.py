"""The multiplexed MQTT client: many connections on one thread, against a real broker."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest

from device_agent import protocol as P
from device_agent.errors import TransportError
from device_agent.mqtt import Message, MqttClient, MqttConfig, Will
from device_agent.mqtt.mux import MqttMux, MuxClient
from fleet.broker import LocalBroker, free_port
from tests.support.fleet_harness import wait_until


class Recorder:
    def __init__(self) -> None:
        self.connected: set[str] = set()
        self.lost: dict[str, list[str]] = defaultdict(list)
        self.messages: dict[str, list[Message]] = defaultdict(list)
        self.lock = threading.Lock()

    def client(self, mux: MqttMux, url: str, cid: str, **kw: object) -> MuxClient:
        def on_connect() -> None:
            self.connected.add(cid)

        def on_disconnect(reason: str) -> None:
            self.connected.discard(cid)
            self.lost[cid].append(reason)

        def on_message(msg: Message) -> None:
            with self.lock:
                self.messages[cid].append(msg)

        config = MqttConfig(url=url, client_id=cid, clean_start=True, session_expiry_s=0, **kw)  # type: ignore[arg-type]
        return MuxClient(mux, config, on_connect=on_connect, on_disconnect=on_disconnect, on_message=on_message)


def test_many_connections_share_one_thread(broker: LocalBroker) -> None:
    n = 150
    mux, rec = MqttMux(), Recorder()
    mux.start()
    watcher = MqttClient(MqttConfig(url=broker.url, client_id="watcher", clean_start=True, session_expiry_s=0))
    watcher.connect()
    watcher.subscribe([("mux/+/up", 1)])
    threads_before = threading.active_count()
    clients = {f"c{i}": rec.client(mux, broker.url, f"c{i}") for i in range(n)}
    try:
        for c in clients.values():
            c.connect()
        wait_until(lambda: len(rec.connected) == n, 30, "every client to connect")
        assert threading.active_count() == threads_before  # no thread per connection
        for cid, c in clients.items():
            c.subscribe([(f"mux/{cid}/down", 1)])
        time.sleep(0.5)
        for cid in clients:
            watcher.publish(f"mux/{cid}/down", cid.encode(), qos=1)
        wait_until(lambda: sum(len(v) for v in rec.messages.values()) == n, 30, "every client to receive")
        assert all(rec.messages[cid][0].payload == cid.encode() for cid in clients)
        for cid, c in clients.items():  # publish from another thread than the mux's
            c.publish(f"mux/{cid}/up", b"pong", qos=1)
        got: set[str] = set()
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            got.add(watcher.messages.get(timeout=30).topic.split("/")[1])
        assert got == set(clients)
        assert mux.errors == 0
    finally:
        for c in clients.values():
            c.disconnect()
        watcher.disconnect()
        mux.stop()


def test_abort_publishes_the_will_and_reconnect_works(broker: LocalBroker) -> None:
    mux, rec = MqttMux(), Recorder()
    mux.start()
    watcher = MqttClient(MqttConfig(url=broker.url, client_id="watcher", clean_start=True, session_expiry_s=0))
    watcher.connect()
    status = P.topic("test", "dev-1", P.STATUS)
    watcher.subscribe([(status, 1)])
    c = rec.client(mux, broker.url, "dev-1")
    try:
        c.connect(will=Will(status, b"offline", qos=1, retain=False))
        wait_until(lambda: "dev-1" in rec.connected, 15, "connect")
        c.abort()
        wait_until(lambda: rec.lost["dev-1"], 15, "the loss to be reported")
        assert not c.is_connected
        assert watcher.messages.get(timeout=15).payload == b"offline"  # no DISCONNECT was sent: the will
        with pytest.raises(TransportError):
            MuxClient(mux, MqttConfig(url=broker.url, client_id="never")).publish("x", b"y")
        c.connect()
        wait_until(lambda: "dev-1" in rec.connected, 15, "reconnect")
        c.publish(status, b"online", qos=1)
        assert watcher.messages.get(timeout=15).payload == b"online"
    finally:
        c.disconnect()
        watcher.disconnect()
        mux.stop()


def test_unreachable_broker_is_reported_not_raised() -> None:
    mux, rec = MqttMux(), Recorder()
    mux.start()
    try:
        c = rec.client(mux, f"mqtt://127.0.0.1:{free_port()}", "lonely")
        c.connect()
        wait_until(lambda: rec.lost["lonely"], 15, "the failure to be reported")
        assert "cannot reach broker" in rec.lost["lonely"][0]
        assert not c.is_connected
    finally:
        mux.stop()


def test_timers_run_in_order_and_a_failing_callback_does_not_stop_the_loop() -> None:
    mux = MqttMux()
    mux.start()
    seen: list[str] = []
    try:
        mux.call_later(0.2, lambda: seen.append("late"))
        mux.call_later(0.05, lambda: seen.append("early"))
        mux.call_soon(lambda: 1 / 0)  # type: ignore[func-returns-value]
        mux.call_soon(lambda: seen.append("soon"))
        wait_until(lambda: len(seen) == 3, 5, "the callbacks")
        assert seen == ["soon", "early", "late"]
        assert mux.errors == 1
    finally:
        mux.stop()


def test_bad_protocol_is_refused() -> None:
    with pytest.raises(TransportError, match="protocol"):
        MuxClient(MqttMux(), MqttConfig(url="mqtt://127.0.0.1:1", client_id="x", protocol="4"))
