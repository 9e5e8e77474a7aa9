"""Window statistics and anomaly detectors computed on secret shares."""
