"""Simulated TEE: code measurement, platform attestation quotes and sealed storage."""
