"""A real asyncua server standing in for a PLC: a folder of Double variables."""

from __future__ import annotations

from pathlib import Path

from asyncua import ua
from asyncua.common.node import Node
from asyncua.server.server import Server

from demo.services import free_port


class Plc:
    """An OPC-UA server with ``n`` variables ``Line2/v0..v{n-1}`` in namespace 2."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.port = free_port()
        self.url = f"opc.tcp://127.0.0.1:{self.port}/plant/"
        self.server = Server()
        self.vars: list[Node] = []

    async def start(self, secure: tuple[Path, Path] | None = None) -> None:
        """Create the address space and start listening (Basic256Sha256 only if ``secure``).

        ``secure`` is the server's (certificate DER, private key PEM).
        """
        await self.server.init()
        self.server.set_endpoint(self.url)
        if secure is None:
            self.server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            self.server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            await self.server.load_certificate(str(secure[0]))
            await self.server.load_private_key(str(secure[1]))
        idx = await self.server.register_namespace("urn:tecc:test-plc")
        folder = await self.server.nodes.objects.add_folder(
            ua.NodeId(ua.String("Line2"), ua.Int16(idx)), "Line2"
        )
        for i in range(self.n):
            var = await folder.add_variable(
                ua.NodeId(ua.String(f"Line2.v{i}"), ua.Int16(idx)), f"v{i}", 0.0
            )
            self.vars.append(var)
        await self.server.start()

    async def write(self, i: int, value: float) -> None:
        """Set variable ``i`` (a data change for subscribers)."""
        await self.server.write_attribute_value(
            self.vars[i].nodeid, ua.DataValue(ua.Variant(value, ua.VariantType.Double))
        )

    async def stop(self) -> None:
        """Stop the server."""
        await self.server.stop()
