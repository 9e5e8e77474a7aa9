"""The MPC engine's exception tree.

Everything the engine raises on purpose is an :class:`MpcError`. Callers that
run a protocol catch :class:`PeerLostError` to restart a session and treat
:class:`ProtocolError` as a bug or an attack on the channel.
"""

from __future__ import annotations

from tecc_contract.errors import ConfigFileError


class MpcError(Exception):
    """Root of every error raised by :mod:`cloud_tecc.mpc`."""


class MpcParameterError(MpcError):
    """A party, dealer or transport parameter passed by the caller is invalid (caller's fault)."""


class MpcConfigError(MpcError, ConfigFileError):
    """The mesh file or a key file is invalid (operator's fault); the message names the key."""


class PeerLostError(MpcError):
    """A peer or the dealer disconnected or did not answer within the timeout."""


class ProtocolError(MpcError):
    """A peer sent a message that does not fit the protocol (wrong round, length, shape)."""


class AuthenticationError(MpcError):
    """A peer failed the Ed25519 handshake: unknown index, wrong key or bad signature."""


class CorrelationError(MpcError):
    """Dealer correlations are missing, malformed or were used out of order."""
