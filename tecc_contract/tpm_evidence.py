"""TPM evidence for gateway enrolment, verified in software (pure: no TPM, no I/O).

The shape is Keylime's and Azure DPS's. A gateway proves three things to a
verifier (each cluster party checks them itself, under its own policy):

1. **Its TPM is genuine**: the endorsement key's certificate chains to a
   configured manufacturer CA (:func:`verify_ek`), and the EK public area the
   gateway sends is the one certified (same RSA modulus, the EK template's
   attributes).
2. **Its attestation key lives in that TPM**: the verifier encrypts a fresh
   secret to the EK, bound to the AK's name (TPM2_MakeCredential, done here in
   software with tpm2-pytss's helper over ``cryptography``: RSA-OAEP of the
   seed with label ``IDENTITY``, KDFa, AES-CFB and the outer HMAC, TPM 2.0
   Part 1 §24); only a TPM holding both the EK and a loaded object of exactly
   that name can recover it (TPM2_ActivateCredential). The AK's public area
   must be a restricted, fixedTPM signing key (:func:`check_ak`), so it can
   sign only TPM-generated structures such as quotes.
3. **It runs the measured gateway software and holds the identity key**: a
   TPM2_Quote by the AK over the PCRs of the measured launch, whose qualifying
   data is :func:`qualifying_data` — SHA-256 of a purpose tag, the gateway id,
   its Ed25519 identity key and the verifier's fresh nonce
   (:func:`verify_quote`) — and an Ed25519 signature by the identity key over
   the same bytes (:func:`verify_possession`).

Nonces are single use and expire (:class:`Challenges`): a stale or replayed
nonce is refused. Every refusal is an :class:`EvidenceError` whose ``reason``
is a short label (a metric label) and whose message says what to fix.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from tecc_contract.errors import ContractError

os.environ.setdefault("TSS2_LOG", "all+NONE")

from tpm2_pytss.constants import TPM2_ALG, TPM2_ECC, TPM2_GENERATED, TPM2_ST, TPMA_OBJECT
from tpm2_pytss.types import TPM2B_PUBLIC, TPML_PCR_SELECTION, TPMS_ATTEST, TPMT_SIGNATURE
from tpm2_pytss.utils import make_credential

REASONS: Final = (
    "malformed",
    "ek_ca",
    "ek_mismatch",
    "ak_attributes",
    "ak_not_bound",
    "nonce",
    "quote_signature",
    "pcr",
    "identity",
)
ENROL_TAG: Final = b"tecc-enrol-v1\x00"
REQUOTE_TAG: Final = b"tecc-requote-v1\x00"
SECRET_BYTES: Final = 32
NONCE_BYTES: Final = 32
_MAX_BLOB: Final = 4096

#: Attributes a TCG EK template has (EK Credential Profile, template L-1) and an AK must.
_EK_ATTRS: Final = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.ADMINWITHPOLICY
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.DECRYPT
)
_AK_ATTRS: Final = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
)


class EvidenceError(ContractError):
    """TPM evidence is refused; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _public(raw: bytes, what: str) -> Any:
    if not 0 < len(raw) <= _MAX_BLOB:
        raise EvidenceError("malformed", f"{what} is {len(raw)} bytes; expected a TPM2B_PUBLIC")
    try:
        pub, used = TPM2B_PUBLIC.unmarshal(raw)
    except Exception as exc:  # the TSS raises several types for bad bytes
        raise EvidenceError("malformed", f"{what} does not parse as a TPM2B_PUBLIC") from exc
    if used != len(raw):
        raise EvidenceError("malformed", f"{what} has {len(raw) - used} trailing bytes")
    return pub


def load_cas(pem: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle (a manufacturer's root and intermediate CAs)."""
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise EvidenceError("malformed", f"not a PEM certificate bundle ({exc})") from exc


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def verify_ek(
    ek_cert_der: bytes, ek_public: bytes, cas: Sequence[x509.Certificate], now: datetime
) -> Any:
    """The certified EK public area; :class:`EvidenceError` ``ek_ca`` / ``ek_mismatch``.

    The chain is built from the EK certificate through ``cas`` (each one a
    trust anchor: a configured intermediate is enough, a configured root
    needs its intermediates in the same bundle); every certificate on it must
    be valid at ``now`` (timezone-aware UTC).
    """
    try:
        cert = x509.load_der_x509_certificate(ek_cert_der)
    except ValueError as exc:
        raise EvidenceError("malformed", "the EK certificate is not DER X.509") from exc
    chain, current = [cert], cert
    for _ in range(len(cas) + 1):
        issuer = next((ca for ca in cas if _issued_by(current, ca)), None)
        if issuer is None:
            break
        chain.append(issuer)
        if issuer.subject == issuer.issuer:
            break
        current = issuer
    if len(chain) == 1:
        raise EvidenceError(
            "ek_ca",
            f"the EK certificate (issuer {cert.issuer.rfc4514_string()!r}) does not chain to "
            "any manufacturer CA in enrolment.ek_ca_files: add that vendor's CA bundle "
            "if the TPM is genuine",
        )
    for c in chain:
        if not c.not_valid_before_utc <= now <= c.not_valid_after_utc:
            raise EvidenceError(
                "ek_ca", f"certificate {c.subject.rfc4514_string()!r} is not valid at {now}"
            )
    pub = _public(ek_public, "ek_public")
    area = pub.publicArea
    key = cert.public_key()
    if area.type != TPM2_ALG.RSA or not isinstance(key, rsa.RSAPublicKey):
        raise EvidenceError("ek_mismatch", "only RSA-2048 EKs (template L-1) are supported")
    if int.from_bytes(bytes(area.unique.rsa), "big") != key.public_numbers().n:
        raise EvidenceError("ek_mismatch", "ek_public is not the key the EK certificate certifies")
    if (int(area.objectAttributes) & _EK_ATTRS) != _EK_ATTRS or area.nameAlg != TPM2_ALG.SHA256:
        raise EvidenceError(
            "ek_mismatch", "ek_public lacks the EK template's attributes (restricted decrypt)"
        )
    return pub


def check_ak(ak_public: bytes) -> Any:
    """The AK public area if it is a restricted, fixedTPM ECDSA P-256 signing key."""
    pub = _public(ak_public, "ak_public")
    area = pub.publicArea
    attrs = int(area.objectAttributes)
    if (attrs & _AK_ATTRS) != _AK_ATTRS or attrs & TPMA_OBJECT.DECRYPT:
        raise EvidenceError(
            "ak_attributes",
            "the attestation key must be restricted, sign-only, fixedTPM, fixedParent and "
            "TPM-generated",
        )
    if (
        area.type != TPM2_ALG.ECC
        or area.nameAlg != TPM2_ALG.SHA256
        or area.parameters.eccDetail.curveID != TPM2_ECC.NIST_P256
        or area.parameters.eccDetail.scheme.scheme != TPM2_ALG.ECDSA
    ):
        raise EvidenceError("ak_attributes", "the attestation key must be ECDSA P-256/SHA-256")
    return pub


def ak_name(ak: Any) -> bytes:
    """The TPM name of the AK (nameAlg ‖ digest of its public area)."""
    return bytes(ak.get_name())


@dataclass(frozen=True, slots=True)
class Credential:
    """TPM2_MakeCredential output: what the gateway's TPM activates."""

    blob: bytes  # TPM2B_ID_OBJECT
    secret: bytes  # TPM2B_ENCRYPTED_SECRET


def make_challenge(ek: Any, ak: Any, secret: bytes) -> Credential:
    """Encrypt ``secret`` to ``ek`` so that only a TPM holding ``ak`` can activate it."""
    blob, enc = make_credential(ek, secret, ak.get_name())
    return Credential(bytes(blob.marshal()), bytes(enc.marshal()))


def check_activation(expected: bytes, activated: bytes) -> None:
    """The gateway recovered the secret: the AK is in the EK's TPM (``ak_not_bound``)."""
    if not hmac.compare_digest(expected, activated):
        raise EvidenceError(
            "ak_not_bound",
            "the credential was not activated: the attestation key is not in the TPM that "
            "holds the certified endorsement key",
        )


def qualifying_data(tag: bytes, gateway_id: str, identity_key: bytes, nonce: bytes) -> bytes:
    """What the quote and the identity signature cover: purpose, gateway, key, nonce."""
    gid = gateway_id.encode()
    return hashlib.sha256(tag + len(gid).to_bytes(2, "big") + gid + identity_key + nonce).digest()


def pcr_digest(values: Mapping[int, bytes]) -> bytes:
    """SHA-256 over the PCR values in ascending index order (TPM2_Quote's pcrDigest)."""
    return hashlib.sha256(b"".join(values[i] for i in sorted(values))).digest()


def pcr_selection(pcrs: Sequence[int]) -> bytes:
    """The marshalled sha256-bank TPML_PCR_SELECTION of ``pcrs``."""
    sel = TPML_PCR_SELECTION.parse("sha256:" + ",".join(str(p) for p in sorted(pcrs)))
    return bytes(sel.marshal())


def verify_quote(
    ak: Any, attest: bytes, signature: bytes, values: Mapping[int, bytes], qualifying: bytes
) -> None:
    """Check a quote: the AK's signature, our qualifying data, the reported PCR values.

    ``values`` are the PCR values the gateway reports (index → 32 bytes); the
    quote must select exactly those PCRs of the sha256 bank and its digest
    must equal :func:`pcr_digest` of them. Whether the values are the
    expected ones is the caller's policy.
    """
    if not 0 < len(attest) <= _MAX_BLOB or not 0 < len(signature) <= _MAX_BLOB:
        raise EvidenceError("malformed", "quote or signature size out of range")
    try:
        att, used = TPMS_ATTEST.unmarshal(attest)
        sig, _ = TPMT_SIGNATURE.unmarshal(signature)
    except Exception as exc:  # the TSS raises several types for bad bytes
        raise EvidenceError("malformed", "the quote does not parse as TPMS_ATTEST") from exc
    if used != len(attest) or att.magic != TPM2_GENERATED.VALUE or att.type != TPM2_ST.ATTEST_QUOTE:
        raise EvidenceError("malformed", "not a TPM-generated quote structure")
    if sig.sigAlg != TPM2_ALG.ECDSA or sig.signature.ecdsa.hash != TPM2_ALG.SHA256:
        raise EvidenceError("quote_signature", "the quote is not signed with ECDSA/SHA-256")
    der = encode_dss_signature(
        int.from_bytes(bytes(sig.signature.ecdsa.signatureR), "big"),
        int.from_bytes(bytes(sig.signature.ecdsa.signatureS), "big"),
    )
    key = ak.publicArea
    point = ec.EllipticCurvePublicNumbers(
        int.from_bytes(bytes(key.unique.ecc.x), "big"),
        int.from_bytes(bytes(key.unique.ecc.y), "big"),
        ec.SECP256R1(),
    )
    try:
        point.public_key().verify(der, attest, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError) as exc:
        raise EvidenceError(
            "quote_signature", "the quote's signature does not verify under the enrolled AK"
        ) from exc
    if not hmac.compare_digest(bytes(att.extraData), qualifying):
        raise EvidenceError(
            "nonce",
            "the quote does not cover this verifier's nonce and the gateway's identity key "
            "(stale, replayed or made for another request)",
        )
    quote = att.attested.quote
    if not values or any(len(v) != 32 for v in values.values()):
        raise EvidenceError("malformed", "pcrs must map PCR indices to 32-byte sha256 values")
    if bytes(quote.pcrSelect.marshal()) != pcr_selection(list(values)):
        raise EvidenceError("pcr", "the quote selects other PCRs than the ones reported")
    if not hmac.compare_digest(bytes(quote.pcrDigest), pcr_digest(values)):
        raise EvidenceError("pcr", "the reported PCR values do not match the quoted digest")


def verify_possession(identity_key: bytes, signature: bytes, qualifying: bytes) -> None:
    """The gateway holds the identity key it enrols (Ed25519 over the qualifying data)."""
    try:
        Ed25519PublicKey.from_public_bytes(identity_key).verify(signature, qualifying)
    except (InvalidSignature, ValueError) as exc:
        raise EvidenceError(
            "identity", "the identity key's signature over the quoted data does not verify"
        ) from exc


def check_pcrs(
    values: Mapping[int, bytes], allowed: Mapping[int, Sequence[bytes]], required: Sequence[int]
) -> list[int]:
    """The PCRs of ``required`` whose reported value is not in ``allowed`` (empty: all fine).

    A PCR missing from ``values`` is refused (``pcr``); a PCR with no entry in
    ``allowed`` is returned as unmatched, for the caller to decide (operator
    approval).
    """
    missing = [p for p in required if p not in values]
    if missing:
        raise EvidenceError("pcr", f"the quote does not cover PCR(s) {missing}")
    return [p for p in required if values[p] not in allowed.get(p, ())]


@dataclass(frozen=True, slots=True)
class Challenge:
    """A verifier nonce issued to one gateway, with its credential secret (enrolment)."""

    gateway_id: str
    nonce: bytes
    secret: bytes
    issued_ns: int
    purpose: bytes  # ENROL_TAG or REQUOTE_TAG
    context: Any = None  # the caller's state for the second step (e.g. parsed keys)


class Challenges:
    """Outstanding nonces: single use, expiring after ``ttl_ns``, at most ``limit`` held."""

    def __init__(self, *, ttl_ns: int, limit: int, random: Callable[[int], bytes]) -> None:
        self._ttl = ttl_ns
        self._limit = limit
        self._random = random
        self._open: OrderedDict[bytes, Challenge] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    def issue(self, gateway_id: str, purpose: bytes, now_ns: int, context: Any = None) -> Challenge:
        """A fresh nonce (and secret) for ``gateway_id``; the oldest is dropped past the limit."""
        self._expire(now_ns)
        while len(self._open) >= self._limit:
            self._open.popitem(last=False)
        ch = Challenge(
            gateway_id,
            self._random(NONCE_BYTES),
            self._random(SECRET_BYTES),
            now_ns,
            purpose,
            context,
        )
        self._open[ch.nonce] = ch
        return ch

    def consume(self, nonce: bytes, gateway_id: str, purpose: bytes, now_ns: int) -> Challenge:
        """The challenge of ``nonce``, removed; ``nonce`` if unknown, used, expired or foreign."""
        self._expire(now_ns)
        ch = self._open.get(nonce)
        if ch is None or ch.gateway_id != gateway_id or ch.purpose != purpose:
            raise EvidenceError(
                "nonce",
                "unknown, already used or expired nonce: ask for a new challenge "
                "(nonces are single use)",
            )
        del self._open[nonce]
        return ch

    def _expire(self, now_ns: int) -> None:
        while self._open:
            first = next(iter(self._open.values()))
            if first.issued_ns + self._ttl > now_ns:
                break
            self._open.popitem(last=False)
