"""A device's MQTT session: how the core's reports and commands travel over one connection.

Shared by every driver of an ``AgentCore`` (the threaded supervisor and others): announce on a new
connection, publish info and queued events, send telemetry (spooled while offline), turn a received
message into a command for the core and acknowledge it once acted on.
"""

from __future__ import annotations

import contextlib
import logging
import threading

from device_agent import protocol as P
from device_agent.config import AgentConfig
from device_agent.core import Action, AgentCore
from device_agent.errors import ProtocolError, TransportError
from device_agent.homeassistant import discovery_messages
from device_agent.mqtt import Message, MqttClient, MqttConfig, Will
from device_agent.spool import Spool

log = logging.getLogger("edge-agent")


def mqtt_config(config: AgentConfig) -> MqttConfig:
    """The device's MQTT settings from ``[broker]``; commands are acknowledged only once acted on."""
    d = config.device
    return MqttConfig.from_section(config.broker, client_id=f"{d.fleet}.{d.id}", manual_ack=True)


class Session:
    """The core's side of one MQTT client (which may reconnect many times) and the telemetry spool."""

    def __init__(self, core: AgentCore, mqtt: MqttClient) -> None:
        self.core, self.mqtt = core, mqtt
        t = core.config.telemetry
        self.spool = Spool(core.home.spool, t.spool_max_points, t.spool_max_bytes)
        self._flush_lock = threading.Lock()

    def will(self) -> Will:
        return Will(self.core.topic(P.STATUS), b"offline", qos=1, retain=True)

    def announce(self) -> None:
        """On a new connection: subscribe to our commands, say online, publish info (and discovery),
        replay the telemetry spooled while offline. Raises: TransportError."""
        d = self.core.config.device
        self.mqtt.subscribe([(P.command_subscription(d.fleet, d.id), 1)])
        self.mqtt.publish(self.core.topic(P.STATUS), b"online", qos=1, retain=True)
        self.publish_info()
        if self.core.config.telemetry.home_assistant:
            for topic, payload in discovery_messages(d):
                self.mqtt.publish(topic, payload, qos=1, retain=True)
        sent = self.spool.replay(lambda payload: self.mqtt.publish(self.core.topic(P.TELEMETRY), payload, qos=1))
        if sent:
            log.info("replayed %d spooled telemetry points", sent)

    def publish_info(self) -> None:
        if self.mqtt.is_connected:
            try:
                self.mqtt.publish(self.core.topic(P.INFO), P.encode(self.core.info()), qos=1, retain=True)
            except TransportError as exc:
                log.warning("info not published: %s", exc)

    def flush_events(self) -> None:
        """Publish the core's queued events in order (then info, if it changed) while connected."""
        if not self._flush_lock.acquire(blocking=False):
            return  # another thread is flushing; it will take this event too
        try:
            self._flush_pending()
        finally:
            self._flush_lock.release()

    def _flush_pending(self) -> None:
        events = self.core.events
        while events and self.mqtt.is_connected:
            try:
                self.mqtt.publish(self.core.topic(P.EVENTS), P.encode(events[0]), qos=1, timeout=5)
            except TransportError:
                return
            events.popleft()
        if self.core.info_dirty and self.mqtt.is_connected:
            self.core.info_dirty = False
            self.publish_info()

    def send_telemetry(self) -> None:
        """Publish a telemetry point, or spool it while the broker is unreachable. ``spool_dropped``
        counts the points lost so far (spool bounds, a full disk)."""
        point = self.core.telemetry_point()
        point.values["spool_dropped"] = self.spool.dropped
        payload = P.encode(point)
        if self.mqtt.is_connected:
            try:
                self.mqtt.publish(self.core.topic(P.TELEMETRY), payload, qos=0)
                return
            except TransportError:
                pass
        self.spool.append(payload)

    def on_message(self, msg: Message) -> Action:
        """Hand a received command to the core, then acknowledge it (state.json records it by now)."""
        action = Action.NONE
        try:
            kind = P.parse_topic(msg.topic).kind
            action = self.core.handle_command(P.parse_command(kind, msg.payload))
        except ProtocolError as exc:
            log.warning("ignored malformed command on %s: %s", msg.topic, exc)
        if action is Action.PUBLISH_INFO:
            self.publish_info()
        self.mqtt.ack(msg)
        return action

    def goodbye(self) -> None:
        """Say ``offline`` (retained) if connected, then disconnect."""
        if self.mqtt.is_connected:
            with contextlib.suppress(TransportError):
                self.mqtt.publish(self.core.topic(P.STATUS), b"offline", qos=1, retain=True, timeout=2)
        self.mqtt.disconnect()
