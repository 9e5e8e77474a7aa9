"""The contract's exception tree and the typed reasons a reading is rejected.

Every error that untrusted input can cause is a :class:`ContractError`; callers
catch that one class at their boundary. Rejections of individual readings are
not exceptions: they are values (:class:`RejectReason`) that the caller counts.
"""

from __future__ import annotations

import enum


class ContractError(Exception):
    """Root of every error raised by :mod:`tecc_contract`."""


class ParameterError(ContractError):
    """A codec, sensor or sharing parameter passed by the caller is invalid (caller's fault)."""


class ConfigFileError(ContractError):
    """A config file does not match its schema (operator's fault); the message names the key.

    Each package raises its own subclass (``GatewayConfigError``,
    ``CloudConfigError``, ``MpcConfigError``, ``SimConfigError``) through
    :func:`tecc_contract.schema.load_file`.
    """


class FrameError(ContractError):
    """Bytes from the wire are not a well-formed frame (sender's fault)."""


class VersionError(FrameError):
    """The frame declares a format version this code does not speak."""


class SignatureError(ContractError):
    """The gateway signature does not verify under the expected key."""


class DecryptError(ContractError):
    """The HPKE ciphertext did not open: wrong recipient key or tampered data."""


class ShareError(ContractError):
    """Shares are inconsistent: wrong count, length or party set."""


class AttestationError(ContractError):
    """Attestation evidence is malformed, forged, stale or not allow-listed."""


class RejectReason(enum.StrEnum):
    """Why a single reading was refused before sharing. Values are metric labels."""

    NOT_NUMERIC = "not_numeric"
    NAN = "nan"
    INFINITE = "infinite"
    BELOW_RANGE = "below_range"
    ABOVE_RANGE = "above_range"
    UNKNOWN_SENSOR = "unknown_sensor"
    MALFORMED = "malformed"
    BAD_STATUS = "bad_status"
    BAD_TIMESTAMP = "bad_timestamp"
    NO_RESPONSE = "no_response"  # a polled device did not answer in time (Modbus)
    DEVICE_EXCEPTION = "device_exception"  # a polled device answered with an exception
