"""Discover an OPC-UA server's numeric variables (``tecc-gateway init --opcua``).

One session (secured with the gateway's certificate when asked, the server
certificate checked against, or pinned into, the same trust-on-first-use file
the gateway's source uses, :class:`~gateway.sources.opcua_trust.ServerPin`),
then a breadth-first browse from ``Objects`` along forward hierarchical
references (not ``HasProperty``; namespace 0 nodes such as ``Server`` are
left out), bounded in depth and node count. Every scalar, readable variable
of a numeric DataType (Double, Float, SByte .. UInt64, or a subtype whose
value is numeric) becomes a :class:`Found` sensor: its id is the browse path
below ``Objects`` (names sanitized to ``[A-Za-z0-9_-]``, joined by ``.``,
made unique by ``_2``, ``_3`` in browse order), ``EURange`` its declared range
and ``EngineeringUnits`` its unit. Everything else is a :class:`Skipped` with
the reason.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.client.client import Client, _first_cert_from_chain
from asyncua.common.node import Node
from asyncua.crypto import uacrypto
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds

from gateway.config import SecurityMode
from gateway.errors import GatewayError
from gateway.sources.opcua_trust import ServerPin, status_name
from tecc_contract.fixedpoint import MAX_ABS_RANGE

MAX_NODES = 20_000  # nodes visited at most: a huge server cannot grow memory without bound
MAX_DEPTH = 12
#: ns=0 numeric DataTypes -> (name, lowest, highest value of the type)
NUMERIC: dict[int, tuple[str, float, float]] = {
    ObjectIds.SByte: ("SByte", -128.0, 127.0),
    ObjectIds.Byte: ("Byte", 0.0, 255.0),
    ObjectIds.Int16: ("Int16", -32768.0, 32767.0),
    ObjectIds.UInt16: ("UInt16", 0.0, 65535.0),
    ObjectIds.Int32: ("Int32", -(2.0**31), 2.0**31 - 1),
    ObjectIds.UInt32: ("UInt32", 0.0, 2.0**32 - 1),
    ObjectIds.Int64: ("Int64", -(2.0**63), 2.0**63 - 1),
    ObjectIds.UInt64: ("UInt64", 0.0, 2.0**64 - 1),
    ObjectIds.Float: ("Float", -math.inf, math.inf),
    ObjectIds.Double: ("Double", -math.inf, math.inf),
}
_VARIANT_NUMERIC = {
    ua.VariantType.SByte: ObjectIds.SByte,
    ua.VariantType.Byte: ObjectIds.Byte,
    ua.VariantType.Int16: ObjectIds.Int16,
    ua.VariantType.UInt16: ObjectIds.UInt16,
    ua.VariantType.Int32: ObjectIds.Int32,
    ua.VariantType.UInt32: ObjectIds.UInt32,
    ua.VariantType.Int64: ObjectIds.Int64,
    ua.VariantType.UInt64: ObjectIds.UInt64,
    ua.VariantType.Float: ObjectIds.Float,
    ua.VariantType.Double: ObjectIds.Double,
}
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class Found:
    """A numeric variable proposed as a sensor."""

    node_id: str
    path: str  # browse path below Objects, '/'-separated
    sensor_id: str
    data_type: str
    range: tuple[float, float] | None  # EURange, None when the server declares none
    unit: str


@dataclass(frozen=True, slots=True)
class Skipped:
    """A variable that is not proposed, and why."""

    node_id: str
    path: str
    reason: str


@dataclass(slots=True)
class Discovery:
    """What one browse found."""

    found: list[Found] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    truncated: bool = False  # MAX_NODES reached
    server_certificate: bytes | None = None  # DER, for secured sessions
    pinned: bool = False  # recorded at first use now
    endpoints: list[tuple[str, str]] = field(default_factory=list)  # offered (policy, mode)


def sanitize(name: str) -> str:
    """One browse name as an id segment: ``[A-Za-z0-9_-]`` only, never empty."""
    return _UNSAFE.sub("_", name).strip("_") or "node"


class SensorIds:
    """Sensor ids from browse paths: stable for a given address space, unique."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def take(self, names: list[str]) -> str:
        """The id of a variable at browse path ``names`` (first come keeps the plain id)."""
        base = ".".join(sanitize(n) for n in names)[:190]
        sid, n = base, 1
        while sid in self._taken:
            n += 1
            sid = f"{base}_{n}"
        self._taken.add(sid)
        return sid


@dataclass(frozen=True, slots=True)
class Secure:
    """What a secured session needs: mode, the gateway's certificate, key and URI, the pin."""

    mode: SecurityMode
    certificate_der: bytes
    key_pem: bytes
    application_uri: str
    pin: ServerPin
    certificate_path: Path


def _mode(mode: SecurityMode) -> ua.MessageSecurityMode:
    if mode is SecurityMode.SIGN:
        return ua.MessageSecurityMode.Sign
    return ua.MessageSecurityMode.SignAndEncrypt


def _offered(endpoints: list[Any]) -> list[tuple[str, str]]:
    return sorted(
        {(e.SecurityPolicyUri.rsplit("#", 1)[-1], e.SecurityMode.name) for e in endpoints}
    )


async def discover(url: str, secure: Secure | None, *, timeout_s: float = 10.0) -> Discovery:
    """Connect to ``url``, browse from Objects and classify every variable."""
    out = Discovery()
    client = Client(url, timeout=timeout_s)
    endpoints = await client.connect_and_get_server_endpoints()
    out.endpoints = _offered(endpoints)
    if secure is not None:
        client.application_uri = secure.application_uri
        try:
            endpoint = Client.find_endpoint(
                endpoints, _mode(secure.mode), SecurityPolicyBasic256Sha256.URI
            )
        except ValueError as exc:
            raise GatewayError(
                f"{url} offers no Basic256Sha256 {secure.mode.value} endpoint (it offers "
                f"{out.endpoints}); pick one of those with --security"
            ) from exc
        presented = _first_cert_from_chain(endpoint.ServerCertificate)
        secure.pin.check(presented)
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            certificate=secure.certificate_der,
            private_key=uacrypto.CertProperties(secure.key_pem, "pem"),
            server_certificate=presented,
            mode=_mode(secure.mode),
        )
        out.server_certificate = presented
    await client.connect()
    try:
        if secure is not None:
            out.pinned = secure.pin.record(out.server_certificate)
        await _browse(client, out)
    finally:
        await client.disconnect()
    return out


async def _browse(client: Client, out: Discovery) -> None:
    ids = SensorIds()
    seen: set[str] = set()
    queue: deque[tuple[Node, list[str]]] = deque([(client.nodes.objects, [])])
    while queue:
        node, names = queue.popleft()
        refs = await node.get_references(
            refs=ObjectIds.HierarchicalReferences, direction=ua.BrowseDirection.Forward
        )
        for ref in refs:
            if ref.ReferenceTypeId == ua.NodeId(ua.Int32(ObjectIds.HasProperty)):
                continue
            nid = ref.NodeId
            if nid.NamespaceIndex == 0 or nid.to_string() in seen:
                continue
            if len(seen) >= MAX_NODES:
                out.truncated = True
                return
            seen.add(nid.to_string())
            child = client.get_node(nid)
            path = [*names, ref.BrowseName.Name or nid.to_string()]
            if ref.NodeClass == ua.NodeClass.Variable:
                await _variable(child, path, ids, out)
            if ref.NodeClass in (ua.NodeClass.Object, ua.NodeClass.Variable) and len(path) < (
                MAX_DEPTH
            ):
                queue.append((child, path))


async def _variable(node: Node, path: list[str], ids: SensorIds, out: Discovery) -> None:
    nid, where = node.nodeid.to_string(), "/".join(path)
    try:
        dt, rank, access, user = await node.read_attributes(
            [
                AttributeIds.DataType,
                AttributeIds.ValueRank,
                AttributeIds.AccessLevel,
                AttributeIds.UserAccessLevel,
            ]
        )
    except Exception as exc:  # a server may refuse any read; that node is skipped
        out.skipped.append(Skipped(nid, where, f"attributes unreadable ({exc})"))
        return
    values = []
    for v in (dt, rank, access, user):
        if v.StatusCode is not None and not v.StatusCode.is_good():
            out.skipped.append(Skipped(nid, where, f"unreadable ({status_name(v.StatusCode)})"))
            return
        values.append(None if v.Value is None else v.Value.Value)
    data_type, value_rank, level, user_level = values
    readable = ua.AccessLevel.CurrentRead.mask
    if not (int(level or 0) & readable and int(user_level or 0) & readable):
        out.skipped.append(Skipped(nid, where, "not readable (AccessLevel)"))
        return
    if value_rank != ua.ValueRank.Scalar:
        out.skipped.append(Skipped(nid, where, "not a scalar (arrays are not sensors)"))
        return
    type_id = await _numeric_type(node, data_type) if isinstance(data_type, ua.NodeId) else None
    if type_id is None:
        out.skipped.append(Skipped(nid, where, f"not numeric (DataType {data_type})"))
        return
    eu_range, unit = await _properties(node)
    out.found.append(Found(nid, where, ids.take(path), NUMERIC[type_id][0], eu_range, unit))


async def _numeric_type(node: Node, data_type: ua.NodeId) -> int | None:
    """The ns=0 numeric type id of a variable, or None; subtypes are judged by their value."""
    if data_type.NamespaceIndex == 0 and data_type.Identifier in NUMERIC:
        return int(data_type.Identifier)
    try:
        dv = await node.read_data_value()
    except Exception:  # an abstract or vendor type whose value cannot be read: not a sensor
        return None
    vt = dv.Value.VariantType if dv.Value is not None else None
    return _VARIANT_NUMERIC.get(vt) if vt is not None else None


async def _properties(node: Node) -> tuple[tuple[float, float] | None, str]:
    """EURange (if valid) and the EngineeringUnits display name of an analog item."""
    eu_range: tuple[float, float] | None = None
    unit = ""
    for prop in await node.get_properties():
        name = (await prop.read_browse_name()).Name
        if name not in ("EURange", "EngineeringUnits"):
            continue
        try:
            value = await prop.read_value()
        except Exception:  # an unreadable property is as good as none  # noqa: S112
            continue
        if name == "EURange" and isinstance(value, ua.Range):
            low, high = float(value.Low), float(value.High)
            finite = math.isfinite(low) and math.isfinite(high)
            if finite and low < high and max(abs(low), abs(high)) <= MAX_ABS_RANGE:
                eu_range = (low, high)
        elif name == "EngineeringUnits" and isinstance(value, ua.EUInformation):
            unit = (value.DisplayName.Text or "") if value.DisplayName else ""
    return eu_range, unit
