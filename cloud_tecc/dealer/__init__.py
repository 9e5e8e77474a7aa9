"""The dealer service: correlated randomness for the parties over attested links."""
