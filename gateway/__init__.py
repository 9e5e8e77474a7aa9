"""The edge gateway agent: sensor sources, TPM-sealed keys, durable spool and uplink.

It reads OPC-UA and MQTT streams, validates each reading against its sensor's
declared range, shares and seals each batch once for all clusters, spools the
envelopes durably and ships them to attested clusters only.
"""
