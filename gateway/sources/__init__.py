"""Sensor sources: MQTT and OPC-UA adapters plus pure payload parsing."""
