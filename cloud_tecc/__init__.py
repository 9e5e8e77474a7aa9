"""TECC clusters: simulated enclaves, share ingest, MPC analytics and the output service."""
