"""Seal and unseal small secrets in a TPM 2.0 under a PCR policy (tpm2-pytss ESAPI).

A secret is stored as a keyed-hash object under an ECC P-256 storage primary
derived from the owner hierarchy's seed (re-created on every use, so nothing
has to be persisted in the TPM). The object's authPolicy is PolicyPCR over the
configured PCR selection *as it was when sealing*, and it has no userWithAuth,
so only a policy session whose PCRs still match can unseal it.

Every session that carries a secret is *salted* (its session key is derived
from a salt encrypted to the storage primary, so an observer of the TPM link
cannot compute it) and uses AES-128-CFB parameter encryption: DECRYPT on
``TPM2_Create`` (the secret travels to the TPM encrypted) and ENCRYPT on
``TPM2_Unseal`` (it travels back encrypted). Without that, the identity seed
and the spool key crossed the link in clear at provisioning and at every
start. The primary is authorised with an HMAC session, so an owner
authorisation value (``tpm.owner_auth_file``) never crosses it either.
What salting does not stop: an *active* attacker on the link who substitutes
the primary's public key (a real deployment pins the primary's name, or
uses the TPM inside the SoC where there is no external bus).

Sealing may bind to *predicted* PCR values (``expected``): the measured
launch (:mod:`gateway.launch`) extends PCR 14 with the code bundle and the
config before the agent unseals, and provisioning seals to the value those
measurements produce, so a changed agent file or config fails to unseal.

Sealed objects are NODA: they have no authValue to guess (only the PCR
policy authorises them), so dictionary-attack lockout, which swtpm reaches
after a few unorderly restarts, never locks the gateway out of its keys.

Every transient object and session is flushed before returning: without a
resource manager (swtpm socket, no tpm2-abrmd) leaked handles exhaust the
TPM's object slots across runs.

The TCTI string is ``name:config`` as for tpm2-tools, e.g. ``swtpm:port=2321``
or ``device:/dev/tpmrm0``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from gateway.errors import PcrPolicyError, TpmError

os.environ.setdefault("TSS2_LOG", "all+NONE")  # the TSS logs expected policy failures to stderr

from tpm2_pytss import ESAPI, TCTILdr, TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_RC, TPM2_SE, TPMA_OBJECT, TPMA_SESSION
from tpm2_pytss.types import (
    TPM2B_DIGEST,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPM2B_SENSITIVE_DATA,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMS_SENSITIVE_CREATE,
    TPMT_HA,
    TPMT_SYM_DEF,
    TPMU_HA,
)

MAX_SECRET = 128  # TPM2B_SENSITIVE_DATA limit for keyed-hash objects
_PRIMARY = "ecc256:aes128cfb"
_PARAM_CIPHER = "aes128cfb"  # session parameter encryption
_ZERO = bytes(32)


@dataclass(frozen=True, slots=True)
class SealedBlob:
    """The public and (TPM-encrypted) private parts of a sealed object, plus its policy."""

    private: bytes
    public: bytes
    pcrs: tuple[int, ...]
    bank: str

    def to_json(self) -> str:
        """Serialise for storage on disk (safe: the private part is wrapped by the TPM)."""
        return json.dumps(
            {
                "version": 1,
                "private": self.private.hex(),
                "public": self.public.hex(),
                "pcrs": list(self.pcrs),
                "bank": self.bank,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> SealedBlob:
        """Parse :meth:`to_json` output; :class:`TpmError` if it is not a sealed blob."""
        try:
            o = json.loads(text)
            return cls(
                bytes.fromhex(o["private"]),
                bytes.fromhex(o["public"]),
                tuple(int(p) for p in o["pcrs"]),
                str(o["bank"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise TpmError(f"sealed key file is corrupt ({exc}); re-provision") from exc


def _selection(pcrs: Sequence[int], bank: str) -> Any:
    return TPML_PCR_SELECTION.parse(f"{bank}:{','.join(str(p) for p in sorted(pcrs))}")


class Tpm:
    """A connection to one TPM through a TCTI; use as a context manager."""

    def __init__(self, tcti: str, *, owner_auth: bytes | None = None) -> None:
        name, _, conf = tcti.partition(":")
        try:
            self._ctx = ESAPI(TCTILdr(name, conf or None))
        except TSS2_Exception as exc:
            raise TpmError(
                f"cannot reach the TPM through TCTI {tcti!r} ({exc}); check "
                "tpm.tcti and that the TPM (or swtpm) is running"
            ) from exc
        self.tcti = tcti
        if owner_auth:
            self._ctx.tr_set_auth(ESYS_TR.OWNER, owner_auth)

    def __enter__(self) -> Tpm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the TCTI connection."""
        self._ctx.close()

    @property
    def esapi(self) -> Any:
        """The ESAPI context (for :mod:`gateway.tpm_identity`)."""
        return self._ctx

    def storage_primary(self) -> Any:
        """Context manager: the owner hierarchy's storage primary, flushed on exit."""
        return self._primary()

    @contextmanager
    def _primary(self) -> Iterator[Any]:
        pub = TPM2B_PUBLIC.parse(
            _PRIMARY, objectAttributes=TPMA_OBJECT.DEFAULT_TPM2_TOOLS_CREATEPRIMARY_ATTRS
        )
        with self._hmac_session(None, 0) as auth:  # owner auth, if any, is HMAC'd
            handle = self._ctx.create_primary(None, pub, session1=auth)[0]
        try:
            yield handle
        finally:
            self._ctx.flush_context(handle)

    def _start(self, kind: Any, salt_key: Any, attrs: int) -> Any:
        sess = self._ctx.start_auth_session(
            ESYS_TR.NONE if salt_key is None else salt_key,
            ESYS_TR.NONE,
            kind,
            TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL) if salt_key is None else _PARAM_CIPHER,
            TPM2_ALG.SHA256,
        )
        self._ctx.trsess_set_attributes(sess, TPMA_SESSION.CONTINUESESSION | attrs)
        return sess

    @contextmanager
    def _hmac_session(self, salt_key: Any, attrs: int) -> Iterator[Any]:
        sess = self._start(TPM2_SE.HMAC, salt_key, attrs)
        try:
            yield sess
        finally:
            self._ctx.flush_context(sess)

    @contextmanager
    def _session(
        self, kind: Any, pcrs: Sequence[int], bank: str, *, salt_key: Any = None, attrs: int = 0
    ) -> Iterator[Any]:
        sess = self._start(kind, salt_key, attrs)
        try:
            self._ctx.policy_pcr(sess, TPM2B_DIGEST(), _selection(pcrs, bank))
            yield sess
        finally:
            self._ctx.flush_context(sess)

    def read_pcr(self, pcr: int) -> bytes:
        """The current sha256 value of PCR ``pcr``."""
        try:
            _, _, digests = self._ctx.pcr_read(_selection([pcr], "sha256"))
        except TSS2_Exception as exc:
            raise TpmError(f"reading PCR {pcr} failed: {exc}") from exc
        return bytes(digests[0])

    def _policy(
        self, pcrs: Sequence[int], bank: str, expected: Mapping[int, bytes] | None
    ) -> bytes:
        """The PolicyPCR digest for the current PCR values, with ``expected`` ones substituted."""
        sel = _selection(pcrs, bank)
        sess = self._start(TPM2_SE.TRIAL, None, 0)
        try:
            if expected:
                if bank != "sha256":
                    raise TpmError("predicted PCR values need tpm.pcr_bank: sha256")
                values = b"".join(expected.get(p) or self.read_pcr(p) for p in sorted(pcrs))
                self._ctx.policy_pcr(sess, TPM2B_DIGEST(hashlib.sha256(values).digest()), sel)
            else:
                self._ctx.policy_pcr(sess, TPM2B_DIGEST(), sel)
            return bytes(self._ctx.policy_get_digest(sess))
        finally:
            self._ctx.flush_context(sess)

    def seal(
        self,
        secret: bytes,
        pcrs: Sequence[int],
        bank: str = "sha256",
        *,
        expected: Mapping[int, bytes] | None = None,
    ) -> SealedBlob:
        """Seal ``secret`` (≤ 128 bytes) to the values of ``pcrs``.

        Those are the current values, except for the PCRs in ``expected``
        (sha256 bank only), whose predicted values are used instead.
        """
        if not 0 < len(secret) <= MAX_SECRET:
            raise TpmError(f"can seal 1..{MAX_SECRET} bytes, got {len(secret)}")
        try:
            policy = self._policy(pcrs, bank, expected)
            template = TPM2B_PUBLIC.parse(
                "keyedhash",
                objectAttributes=TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.NODA,
                authPolicy=policy,
            )
            sens = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(data=TPM2B_SENSITIVE_DATA(secret)))
            with (
                self._primary() as primary,
                self._hmac_session(primary, TPMA_SESSION.DECRYPT) as sess,
            ):
                priv, pub, *_ = self._ctx.create(primary, sens, template, session1=sess)
        except TSS2_Exception as exc:
            raise TpmError(f"sealing failed: {exc}") from exc
        return SealedBlob(bytes(priv.marshal()), bytes(pub.marshal()), tuple(pcrs), bank)

    def unseal(self, blob: SealedBlob) -> bytes:
        """Unseal ``blob``; :class:`PcrPolicyError` if the PCRs changed since sealing."""
        try:
            priv, _ = TPM2B_PRIVATE.unmarshal(blob.private)
            pub, _ = TPM2B_PUBLIC.unmarshal(blob.public)
        except (TSS2_Exception, ValueError) as exc:
            raise TpmError(f"sealed blob does not parse ({exc}); re-provision") from exc
        try:
            with self._primary() as primary:
                obj = self._ctx.load(primary, priv, pub)
                try:
                    with self._session(
                        TPM2_SE.POLICY,
                        blob.pcrs,
                        blob.bank,
                        salt_key=primary,
                        attrs=TPMA_SESSION.ENCRYPT,
                    ) as sess:
                        return bytes(self._ctx.unseal(obj, session1=sess))
                finally:
                    self._ctx.flush_context(obj)
        except TSS2_Exception as exc:
            if exc.error in (TPM2_RC.POLICY_FAIL, TPM2_RC.PCR_CHANGED):
                pcr_list = ",".join(str(p) for p in blob.pcrs)
                raise PcrPolicyError(
                    f"the TPM refused to unseal the gateway keys: PCRs {pcr_list} ({blob.bank}) "
                    "no longer match the values they were sealed to, so the boot chain or "
                    "firmware changed since provisioning. The agent will not start. If the "
                    "change was an authorised update, run `tecc-gateway provision --force` and "
                    "re-enrol the new gateway identity with the clusters; otherwise treat the "
                    "device as tampered and investigate."
                ) from exc
            raise TpmError(f"unsealing failed: {exc}; was the TPM cleared? re-provision") from exc

    def set_owner_auth(self, auth: bytes) -> None:
        """Set the owner hierarchy's authorisation value (from the current one, usually empty).

        The new value travels in a salted, parameter-encrypted session.
        """
        try:
            with (
                self._primary() as primary,
                self._hmac_session(primary, TPMA_SESSION.DECRYPT) as sess,
            ):
                self._ctx.hierarchy_change_auth(ESYS_TR.OWNER, auth, session1=sess)
        except TSS2_Exception as exc:
            raise TpmError(
                f"setting the TPM owner authorisation failed ({exc}); if the owner auth is "
                "already set, put its value in the file tpm.owner_auth_file names"
            ) from exc
        self._ctx.tr_set_auth(ESYS_TR.OWNER, auth)

    def extend_pcr(self, pcr: int, digest: bytes) -> None:
        """Extend PCR ``pcr`` of the sha256 bank with a 32-byte ``digest`` (measurement)."""
        values = TPML_DIGEST_VALUES(
            [TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=digest))]
        )
        try:
            self._ctx.pcr_extend(ESYS_TR.parse(f"pcr{pcr}"), values)
        except TSS2_Exception as exc:
            raise TpmError(f"extending PCR {pcr} failed: {exc}") from exc

    def self_test(self) -> None:
        """Cheap liveness probe: read PCR 0."""
        try:
            self._ctx.pcr_read(_selection([0], "sha256"))
        except TSS2_Exception as exc:
            raise TpmError(f"TPM not responding: {exc}") from exc
