"""A party's operator keys and relayed-action nonces in its JetStream KV (every worker).

With ``jetstream:`` the :class:`~cloud_tecc.party.operators.OperatorStore` of a
party is :class:`KvOperators`, so a key added once (``tecc-cluster admin
operator-key add``, from any host that reaches the party's JetStream) is
accepted by every worker the output may ask, and a statement used at one
worker is refused at all the others.

- **Keys.** Bucket ``tecc_operator_keys`` (history 1), key ``op.<name>``,
  value one :class:`OperatorKeyWire` (msgspec JSON, unknown fields refused).
  The value is the MAC key itself: HMAC verification needs it. The bucket is
  inside the party's trust boundary exactly as ``operator-keys.json`` (0600)
  was: readable only with the party's NATS credential (``jetstream.servers``
  or ``state_dir/nats/``), held by the party's processes and its operator.
  ``remove`` writes a delete marker; every write is compare-and-set.
- **Nonces.** Bucket ``tecc_operator_nonces`` (history 1, per-message TTL,
  bounded), key ``n.<nonce>``, value one :class:`NonceWire`, written with
  ``Nats-Expected-Last-Subject-Sequence: 0`` (create only) and ``Nats-TTL`` =
  240 s (the statement's ±120 s window, both sides). Of two workers using one
  nonce exactly one creates the key; the other is refused ``replay``.
- **Malformed values** (a key record that does not decode, or names another
  key than its own; a nonce record that does not decode) are refused, counted
  in ``tecc_operator_kv_malformed_total{bucket}`` and logged: a damaged key
  record authorises nothing (``operator``), a damaged nonce record still
  refuses its nonce (``replay``).
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from pathlib import Path
from typing import Annotated, Final, Literal

import msgspec
import nats.js.errors
from msgspec import Meta
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry, Counter

from cloud_tecc.jetstream.enrolnonces import open_ttl_bucket
from cloud_tecc.jetstream.kv import TRANSIENT, Bucket, RevisionChangedError, contention_pause
from cloud_tecc.party import operators as ops
from cloud_tecc.party.registry import RegistryUnavailableError
from cloud_tecc.service import gateway_admin as ga

log = logging.getLogger(__name__)

KEYS_BUCKET: Final = "tecc_operator_keys"
NONCES_BUCKET: Final = "tecc_operator_nonces"
KEY_PREFIX: Final = "op."
NONCE_PREFIX: Final = "n."
NONCE_TTL_S: Final = math.ceil(ops.NONCE_TTL_NS / 1e9)
#: At most this many nonces at once (× 1 KiB of bucket), about 40 statements a second.
MAX_NONCES: Final = ops.MAX_NONCES
_TRIES: Final = 8
Hex32 = Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]


class OperatorKeyWire(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One operator key in ``tecc_operator_keys`` (version 1)."""

    v: Literal[1]
    name: Annotated[str, Meta(pattern=ops.NAME_PATTERN)]
    key: Hex32  # the 32-byte HMAC key (verification needs the key itself)
    created_ns: Annotated[int, Meta(ge=0)]


class NonceWire(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One used statement nonce in ``tecc_operator_nonces`` (version 1): who used it."""

    v: Literal[1]
    used_ns: Annotated[int, Meta(ge=0)]
    what: Annotated[str, Meta(max_length=300)]  # operator, action, gateway


class KvOperators:
    """:class:`~cloud_tecc.party.operators.OperatorStore` in the party's JetStream KV."""

    where = f"JetStream KV {KEYS_BUCKET}"

    def __init__(self, metrics: CollectorRegistry | None = None) -> None:
        self.keys: Bucket | None = None
        self.nonces: Bucket | None = None
        self.malformed = Counter(
            "tecc_operator_kv_malformed",
            "Operator key and nonce values refused as malformed, by bucket",
            ["bucket"],
            registry=metrics if metrics is not None else CollectorRegistry(),
        )
        for bucket in (KEYS_BUCKET, NONCES_BUCKET):
            self.malformed.labels(bucket)

    async def open(self, js: JetStreamContext, *, replicas: int = 1) -> None:
        """Create both buckets if missing (idempotent)."""
        self.keys = await open_ttl_bucket(js, KEYS_BUCKET, replicas=replicas, max_bytes=4 << 20)
        self.nonces = await open_ttl_bucket(
            js, NONCES_BUCKET, replicas=replicas, max_bytes=MAX_NONCES * 1024, max_value_size=1024
        )

    def _need(self) -> tuple[Bucket, Bucket]:
        if self.keys is None or self.nonces is None:
            raise RegistryUnavailableError("the operator keys are not connected to the KV yet")
        return self.keys, self.nonces

    async def key(self, name: str) -> bytes | None:
        try:
            ops.check_name(name)
        except ValueError:
            return None
        keys, _ = self._need()
        try:
            stored = await keys.get(KEY_PREFIX + name)
        except (*TRANSIENT, nats.js.errors.APIError) as exc:
            raise RegistryUnavailableError(f"{KEYS_BUCKET} not read: {exc!r}") from exc
        if stored is None or stored.value is None:
            return None
        try:
            wire = msgspec.json.decode(stored.value, type=OperatorKeyWire)
            if wire.name != name:
                raise ValueError(f"the record names key {wire.name!r}")
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
            self.malformed.labels(KEYS_BUCKET).inc()
            log.error(
                "%s/%s%s holds no valid operator key (%s); refused: `tecc-cluster admin "
                "operator-key add %s` writes a new one",
                KEYS_BUCKET, KEY_PREFIX, name, exc, name,
            )  # fmt: skip
            return None
        return bytes.fromhex(wire.key)

    async def names(self) -> list[str]:
        keys, _ = self._need()
        try:
            kv = await keys.js.key_value(KEYS_BUCKET)
            found = await kv.keys()
        except nats.js.errors.NoKeysError:
            return []
        except (*TRANSIENT, nats.js.errors.APIError) as exc:
            raise RegistryUnavailableError(f"{KEYS_BUCKET} not listed: {exc!r}") from exc
        return sorted(k[len(KEY_PREFIX) :] for k in found if k.startswith(KEY_PREFIX))

    async def add(self, name: str) -> str:
        ops.check_name(name)
        raw = secrets.token_bytes(32)
        wire = OperatorKeyWire(v=1, name=name, key=raw.hex(), created_ns=time.time_ns())
        await self._replace(name, msgspec.json.encode(wire), delete=False)
        return ga.KEY_PREFIX + raw.hex()

    async def remove(self, name: str) -> bool:
        ops.check_name(name)
        return await self._replace(name, b"", delete=True)

    async def _replace(self, name: str, value: bytes, *, delete: bool) -> bool:
        """Write ``op.<name>`` compare-and-set on its revision; whether a key was there."""
        keys, _ = self._need()
        for attempt in range(_TRIES):
            stored = await keys.get(KEY_PREFIX + name)
            present = stored is not None and stored.value is not None
            if delete and not present:
                return False
            try:
                await keys.write(
                    KEY_PREFIX + name,
                    value,
                    expected=0 if stored is None else stored.revision,
                    delete=delete,
                )
                return present
            except RevisionChangedError:  # another operator command wrote meanwhile
                await contention_pause(attempt)
                continue
        raise RegistryUnavailableError(f"{KEYS_BUCKET}/{KEY_PREFIX}{name} kept changing")

    async def use_nonce(self, nonce: str, now_ns: int, what: str) -> None:
        ops.check_nonce(nonce)
        _, nonces = self._need()
        key = NONCE_PREFIX + nonce
        value = msgspec.json.encode(NonceWire(v=1, used_ns=now_ns, what=what[:300]))
        try:
            await nonces.write(key, value, expected=0, ttl_s=NONCE_TTL_S)
            return
        except RevisionChangedError:
            pass  # used already, here or at another worker
        except nats.js.errors.APIError as exc:  # the bucket is full
            log.warning("operator nonce not stored in %s: %r", NONCES_BUCKET, exc)
            raise ops.RefusedError(
                "busy", "too many operator statements in flight: try again later"
            ) from exc
        except TRANSIENT as exc:
            raise RegistryUnavailableError(f"{NONCES_BUCKET} not written: {exc!r}") from exc
        await self._log_replay(nonces, key)
        raise ops.RefusedError("replay", ops.REPLAY)

    async def _log_replay(self, nonces: Bucket, key: str) -> None:
        try:
            stored = await nonces.get(key)
        except (*TRANSIENT, nats.js.errors.APIError):
            return
        if stored is None or stored.value is None:
            return
        try:
            used = msgspec.json.decode(stored.value, type=NonceWire)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            self.malformed.labels(NONCES_BUCKET).inc()
            log.error("%s/%s holds no valid nonce record (%s); refused", NONCES_BUCKET, key, exc)
            return
        log.warning("operator statement replayed (first used %d: %s)", used.used_ns, used.what)

    async def import_file(self, state_dir: Path) -> int:
        """Copy ``state_dir/operator-keys.json`` into the KV once (a key the KV has stays);
        then rename it ``.imported``. The number of keys copied."""
        keys, _ = self._need()
        file = ops.OperatorKeys(state_dir)
        if not file.path.exists():
            return 0
        try:
            found = file.load()
        except (ValueError, AttributeError) as exc:
            log.error("%s is not an operator key file (%s); not imported", file.path, exc)
            return 0
        copied = 0
        for name, raw in found.items():
            wire = OperatorKeyWire(v=1, name=name, key=raw.hex(), created_ns=time.time_ns())
            try:
                await keys.write(KEY_PREFIX + name, msgspec.json.encode(wire), expected=0)
                copied += 1
            except RevisionChangedError:
                pass  # the KV holds a key of that name: it wins
        file.path.rename(file.path.with_name(file.path.name + ".imported"))
        log.info("imported %d operator key(s) from %s into %s", copied, file.path, KEYS_BUCKET)
        return copied
