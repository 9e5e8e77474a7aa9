"""The MPC engine the TECC clusters compute with: additive shares over Z_2^64.

Public API (stable)::

    from cloud_tecc.mpc import Party, run_parties, share, reveal

    # one party (cluster service): a transport to the peers and a correlation source
    party = Party(index, n, transport, source, frac_bits=DEFAULT_FRAC_BITS)  # 16, fixedpoint
    # local: party.add, sub, add_public, mul_public, sum
    # 1 round: await party.mul(x, y); await party.square(x); await party.trunc(x)
    #          await party.select(s, x, y)
    #          await party.b2a(xor_bits)
    # 2 rounds: await party.mul_fixed(x, y)
    # 6 rounds: await party.msb(x); party.lt(x, y); party.lt_public(x, c)  → 0/1 shares
    # 8 rounds: await party.min(x, y); party.max(x, y)
    # 8·⌈log2 k⌉ rounds: await party.tree_min(x); party.tree_max(x)   (over the last axis)
    # (segmented min/max over ragged windows: cloud_tecc.analytics.minmax, on MpcOps)
    # output: party.open_to(x, output_public_key, context=...) → ciphertext
    #         reconstruct_output(ciphertexts, output_private_key, context=...)  (output side)

    # tests and simulations: n parties + dealer in one process
    results = await run_parties(n, async_fn_taking_a_party)

Shares are uint64 numpy arrays holding fixed-point values with ``frac_bits``
fraction bits (:class:`tecc_contract.fixedpoint.FixedPoint`). Transports:
:class:`MemoryNetwork` (in-process) and :class:`cloud_tecc.mpc.transport_ws.WsTransport`
(aiohttp WebSockets, Ed25519-authenticated, optional TLS). Correlations:
:class:`LocalDealer` (in-process) or :class:`cloud_tecc.mpc.dealer_client.DealerLink`
fetching from :class:`cloud_tecc.mpc.dealer_server.DealerService`. Security
argument, round counts and figures: ``docs/MPC.md``.
"""

from cloud_tecc.mpc.correlations import Kind, Plan
from cloud_tecc.mpc.engine import Party, Traffic
from cloud_tecc.mpc.errors import (
    AuthenticationError,
    CorrelationError,
    MpcError,
    MpcParameterError,
    PeerLostError,
    ProtocolError,
)
from cloud_tecc.mpc.output import open_to, reconstruct_output
from cloud_tecc.mpc.shares import reveal, seeded_random_bytes, share
from cloud_tecc.mpc.sim import run_parties
from cloud_tecc.mpc.source import CorrelationSource, CorrelationStore, LocalDealer
from cloud_tecc.mpc.transport import MemoryNetwork, Transport

__all__ = [
    "AuthenticationError",
    "CorrelationError",
    "CorrelationSource",
    "CorrelationStore",
    "Kind",
    "LocalDealer",
    "MemoryNetwork",
    "MpcError",
    "MpcParameterError",
    "Party",
    "PeerLostError",
    "Plan",
    "ProtocolError",
    "Traffic",
    "Transport",
    "open_to",
    "reconstruct_output",
    "reveal",
    "run_parties",
    "seeded_random_bytes",
    "share",
]
