"""The MQTT transport boundary: ``client`` (one connection, paho's network thread; the only module that
imports paho) and ``mux`` (many connections driven by one thread). paho types never leave this package."""

from device_agent.mqtt.client import BrokerURL, Message, MqttClient, MqttConfig, Will, parse_brokers

__all__ = ["BrokerURL", "Message", "MqttClient", "MqttConfig", "Will", "parse_brokers"]
