"""Machinery every service shares: enclave start-up, attestation endpoint, health, metrics."""
