"""TECC clusters: MPC engine, simulated enclaves, party and dealer services."""
