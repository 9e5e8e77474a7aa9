"""The edge↔cloud contract: fixed-point codec, additive sharing, envelopes, evidence.

Pure code with no I/O. Both the gateway and the TECC clusters import it; neither
imports the other.
"""
