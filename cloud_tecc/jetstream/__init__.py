"""JetStream per trust domain: the party's servers, share log, shard map and leases."""
