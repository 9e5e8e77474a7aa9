"""The gateway's TPM identity: endorsement key, attestation key, credential activation, quotes.

The TPM-side half of enrolment (the verifier's half is
:mod:`tecc_contract.tpm_evidence`):

- **EK**: re-created in the endorsement hierarchy from the TCG default
  RSA-2048 template (or the template the manufacturer stored in NV), so it
  matches the EK certificate the manufacturer wrote to NV index 0x01c00002
  (swtpm: ``swtpm_setup --create-ek-cert``, signed by ``swtpm_localca``).
- **AK**: an ECDSA P-256 restricted signing key, fixedTPM, created once under
  the storage primary and kept as a TPM-wrapped blob in
  ``state_dir/ak.json`` (its private part is encrypted by the TPM, useless
  elsewhere).
- **ActivateCredential** recovers the verifier's secret only if the AK and
  the EK are in this TPM; the EK is authorised with PolicySecret(endorsement)
  as its template's policy demands.
- **Quote**: TPM2_Quote by the AK over the sha256 PCRs asked for, with the
  verifier's qualifying data; the PCR values are read alongside so the
  verifier can compare them with its expectations.

Every transient object and session is flushed before returning.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import TpmError
from gateway.tpm import Tpm

os.environ.setdefault("TSS2_LOG", "all+NONE")

from tpm2_pytss import TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPML_PCR_SELECTION,
    TPMT_SYM_DEF,
)
from tpm2_pytss.utils import NVReadEK, create_ek_template

AK_FILE = "ak.json"
_AK_ATTRS = (
    TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
    | TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.NODA
)


@dataclass(frozen=True, slots=True)
class AkBlob:
    """The AK as stored: TPM-wrapped private part and public area (marshalled)."""

    private: bytes
    public: bytes


@dataclass(frozen=True, slots=True)
class QuoteEvidence:
    """A quote, its signature and the PCR values it covers."""

    attest: bytes
    signature: bytes
    pcrs: dict[int, bytes]


def endorsement(tpm: Tpm) -> tuple[bytes, bytes]:
    """The EK certificate (DER) and the EK public area (TPM2B_PUBLIC) of this TPM."""
    ctx = tpm.esapi
    try:
        cert, template = create_ek_template("EK-RSA2048", NVReadEK(ctx))
        if cert is None:
            raise TpmError(
                "the TPM has no RSA EK certificate in NV (index 0x01c00002): a real TPM "
                "ships with one; for swtpm run `swtpm_setup --create-ek-cert` (see "
                "docs/GATEWAY.md, 'Enrolment')"
            )
        handle, public, *_ = ctx.create_primary(None, template, ESYS_TR.ENDORSEMENT)
        ctx.flush_context(handle)
    except (TSS2_Exception, ValueError) as exc:
        raise TpmError(f"reading the endorsement key failed: {exc}") from exc
    return bytes(cert), bytes(public.marshal())


def load_or_create_ak(tpm: Tpm, state_dir: Path) -> AkBlob:
    """The gateway's AK from ``state_dir/ak.json``, created (and saved 0600) if absent."""
    path = state_dir / AK_FILE
    if path.exists():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            return AkBlob(bytes.fromhex(doc["private"]), bytes.fromhex(doc["public"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TpmError(f"{path} is corrupt ({exc}); delete it and enrol again") from exc
    template = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=_AK_ATTRS)
    try:
        with tpm.storage_primary() as primary:
            priv, pub, *_ = tpm.esapi.create(primary, None, template)
    except TSS2_Exception as exc:
        raise TpmError(f"creating the attestation key failed: {exc}") from exc
    blob = AkBlob(bytes(priv.marshal()), bytes(pub.marshal()))
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"version": 1, "private": blob.private.hex(), "public": blob.public.hex()}, fh)
    return blob


@contextmanager
def _loaded_ak(tpm: Tpm, ak: AkBlob) -> Iterator[Any]:
    ctx = tpm.esapi
    priv, _ = TPM2B_PRIVATE.unmarshal(ak.private)
    pub, _ = TPM2B_PUBLIC.unmarshal(ak.public)
    with tpm.storage_primary() as primary:
        handle = ctx.load(primary, priv, pub)
    try:
        yield handle
    finally:
        ctx.flush_context(handle)


def activate(tpm: Tpm, ak: AkBlob, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
    """TPM2_ActivateCredential: the verifier's secret, if it was made for this AK and EK."""
    ctx = tpm.esapi
    try:
        blob, _ = TPM2B_ID_OBJECT.unmarshal(credential_blob)
        secret, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(encrypted_secret)
        _, template = create_ek_template("EK-RSA2048", NVReadEK(ctx))
        ek = ctx.create_primary(None, template, ESYS_TR.ENDORSEMENT)[0]
        try:
            with _loaded_ak(tpm, ak) as handle:
                sess = ctx.start_auth_session(
                    ESYS_TR.NONE,
                    ESYS_TR.NONE,
                    TPM2_SE.POLICY,
                    TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                    TPM2_ALG.SHA256,
                )
                try:
                    ctx.policy_secret(ESYS_TR.ENDORSEMENT, sess)
                    out = ctx.activate_credential(
                        handle, ek, blob, secret, session1=ESYS_TR.PASSWORD, session2=sess
                    )
                finally:
                    ctx.flush_context(sess)
        finally:
            ctx.flush_context(ek)
    except (TSS2_Exception, ValueError) as exc:
        raise TpmError(
            f"the TPM refused to activate the enrolment credential ({exc}): it was not made "
            "for this TPM's endorsement key and attestation key"
        ) from exc
    return bytes(out)


def quote(tpm: Tpm, ak: AkBlob, pcrs: Sequence[int], qualifying: bytes) -> QuoteEvidence:
    """TPM2_Quote over the sha256 ``pcrs`` with ``qualifying`` data, and their values."""
    ctx = tpm.esapi
    sel = TPML_PCR_SELECTION.parse("sha256:" + ",".join(str(p) for p in sorted(pcrs)))
    try:
        with _loaded_ak(tpm, ak) as handle:
            attest, sig = ctx.quote(handle, sel, qualifying)
    except TSS2_Exception as exc:
        raise TpmError(f"the TPM refused the quote: {exc}") from exc
    values = {p: tpm.read_pcr(p) for p in sorted(pcrs)}
    return QuoteEvidence(bytes(attest), bytes(sig.marshal()), values)
