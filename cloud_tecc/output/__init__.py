"""The output service: the only place released results are reconstructed."""
