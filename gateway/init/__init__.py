"""``tecc-gateway init``: write a gateway config from what the plant's servers expose.

:mod:`gateway.init.opcua` browses an OPC-UA server (creating the gateway's
application certificate for secured endpoints, :mod:`gateway.init.certs`),
:mod:`gateway.init.mqtt` samples MQTT topics and infers their payloads,
:mod:`gateway.init.writer` builds the :class:`~gateway.schema.GatewayFile`
and writes it as annotated YAML, and :mod:`gateway.init.command` runs it.
"""
