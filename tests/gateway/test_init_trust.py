"""``tecc-gateway init`` against a server that checks client certificates (real asyncua).

The server trusts only certificates an operator added by SHA-1 thumbprint
and checks the announced ApplicationUri against the certificate's
SubjectAltName. The first ``init`` is refused and says what to trust; once
the printed thumbprint is trusted, a second ``init --force`` reuses the same
certificate and browses: numeric variables become sensors, a string and an
array variable are listed as skipped.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest
import yaml
from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.gateway.harness import ROOT
from tests.gateway.plc import Plc
from tests.gateway.test_opcua_trust import _cert

pytestmark = pytest.mark.opcua


async def _init(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "init", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_untrusted_then_trusted_by_the_printed_thumbprint(tmp_path: Path) -> None:
    """Refused with the thumbprint to trust; trusted, the same certificate browses."""
    trusted: set[str] = set()
    announced: list[tuple[str, list[str]]] = []

    async def validate(cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        announced.append(
            (app.ApplicationUri, san.get_values_for_type(x509.UniformResourceIdentifier))
        )
        if cert.fingerprint(hashes.SHA1()).hex() not in trusted:
            raise ServiceError(StatusCodes.BadCertificateUntrusted)

    plc = Plc(2)
    plc.server.set_certificate_validator(validate)
    await plc.start(secure=await _cert(tmp_path, "plc", "urn:tecc:plc", server=True))
    folder = plc.server.get_node(ua.NodeId(ua.String("Line2"), ua.Int16(2)))
    await folder.add_variable(ua.NodeId(ua.String("Line2.label"), ua.Int16(2)), "label", "x")
    await folder.add_variable(ua.NodeId(ua.String("Line2.curve"), ua.Int16(2)), "curve", [1.0, 2.0])
    count = ua.Variant(0, ua.VariantType.Int32)
    await folder.add_variable(ua.NodeId(ua.String("Line2.count"), ua.Int16(2)), "count", count)
    flow = await folder.add_variable(ua.NodeId(ua.String("Line2.flow"), ua.Int16(2)), "flow", 0.0)
    wide = ua.Range(Low=1e5, High=2e5)  # beyond the old raw-unit bound ±4096: a scale holds it
    await flow.add_property(
        ua.NodeId(ua.String("Line2.flow.EURange"), ua.Int16(2)), "EURange", wide
    )
    out = tmp_path / "gw" / "gateway.yaml"
    args = ["--opcua", plc.url, "--security", "SignAndEncrypt", "--out", str(out),
            "--gateway-id", "gw-t"]  # fmt: skip
    try:
        code, text = await _init(*args)
        assert code == 4, text
        assert "refused the gateway's client certificate" in text
        assert not out.exists()
        thumb = re.search(r"SHA-1 ([0-9a-f]{40})", text)
        assert thumb is not None, text
        cert_file = out.parent / "var" / "gateway" / "opcua-plc-client.der"
        first = cert_file.read_bytes()
        trusted.add(thumb.group(1))  # what the operator does on the server
        code, text = await _init(*args, "--force")
    finally:
        await plc.stop()
    assert code == 0, text
    assert cert_file.read_bytes() == first  # reused, so the trust given still holds
    assert announced
    assert all(uri in sans for uri, sans in announced)  # the URI the server checks matches
    assert {u for u, _ in announced} == {"urn:tecc:gateway:gw-t"}
    doc = yaml.safe_load(out.read_text())
    ranges = {s["id"]: s["range"] for s in doc["sensors"]}
    assert list(ranges) == ["Line2.v0", "Line2.v1", "Line2.count", "Line2.flow"]
    assert ranges["Line2.v0"] == [-4096.0, 4096.0]  # Double, no EURange: a guess to review
    # per-sensor scaling: the Int32's type range (within ±2^30) and an EURange beyond ±4096
    # are kept (fails on the code before this change: clamped to ±4096, flow skipped)
    assert ranges["Line2.count"] == [-(2.0**30), 2.0**30]
    assert ranges["Line2.flow"] == [1e5, 2e5]
    assert "is a guess, review" in out.read_text()
    assert "no EURange" in out.read_text()
    assert "Line2/label (ns=2;s=Line2.label): not numeric" in text
    assert "Line2/curve (ns=2;s=Line2.curve): not a scalar" in text
