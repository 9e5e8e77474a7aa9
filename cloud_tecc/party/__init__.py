"""A cluster party: share ingest, epoch coordination and the MPC peer."""
