"""Prometheus metrics of one agent, in its own registry (never the global one).

Hot-path counts (readings accepted and rejected) live in plain counters in
:class:`~gateway.ingest.Ingest` and are exported at scrape time by a custom
collector, so a reading costs no Prometheus call.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.ingest import Ingest


class _IngestCollector(Collector):
    def __init__(self, ingest: Ingest) -> None:
        self._ingest = ingest

    def collect(self) -> Iterator[Metric]:
        accepted = CounterMetricFamily(
            "gateway_readings", "Readings accepted from sources", labels=["source"]
        )
        for source, n in list(self._ingest.accepted.items()):
            accepted.add_metric([source], n)
        yield accepted
        rejected = CounterMetricFamily(
            "gateway_readings_rejected",
            "Readings or payloads rejected, by sensor and reason",
            labels=["sensor", "reason"],
        )
        for (sensor, reason), n in list(self._ingest.rejected.items()):
            rejected.add_metric([sensor, reason], n)
        yield rejected


class Metrics:
    """All gauges and counters of one agent."""

    def __init__(self, ingest: Ingest) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        r.register(_IngestCollector(ingest))
        self.refused = Counter(
            "gateway_readings_refused",
            "Readings refused because the spool or backlog is full",
            ["reason"],
            registry=r,
        )
        self.reloads = Counter(
            "gateway_config_reloads",
            "Config reloads on SIGHUP by outcome: ok (applied) or refused (old config kept)",
            ["outcome"],
            registry=r,
        )
        self.late = Counter(
            "gateway_readings_late",
            "Readings that arrived with a timestamp older than the progress already declared "
            "to the clusters (delivered, but too late for their window)",
            registry=r,
        )
        self.through = Gauge(
            "gateway_progress_through_seconds",
            "Timestamp up to which every reading has been handed to the spool",
            registry=r,
        )
        self.notices = Counter(
            "gateway_progress_notices", "Progress notices acknowledged", ["cluster"], registry=r
        )
        self.batches = Counter(
            "gateway_batches_sealed", "Batches shared, sealed and spooled", registry=r
        )
        self.spool_depth = Gauge(
            "gateway_spool_depth_batches", "Batches waiting per cluster", ["cluster"], registry=r
        )
        self.spool_age = Gauge(
            "gateway_spool_oldest_age_seconds",
            "Age of the oldest batch waiting per cluster (0 when empty)",
            ["cluster"],
            registry=r,
        )
        self.spool_bytes = Gauge("gateway_spool_bytes", "Bytes of frames in the spool", registry=r)
        self.spool_overflow = Gauge(
            "gateway_spool_overflow_alarm",
            "1 while the spool is full and new readings are refused",
            registry=r,
        )
        self.backlog = Gauge(
            "gateway_backlog_readings",
            "Readings accepted but not yet sealed (e.g. cluster keys not yet attested)",
            registry=r,
        )
        self.sent = Counter(
            "gateway_uplink_batches_sent",
            "Envelopes acknowledged by a cluster",
            ["cluster"],
            registry=r,
        )
        self.uplink_errors = Counter(
            "gateway_uplink_errors", "Failed uplink attempts", ["cluster", "kind"], registry=r
        )
        self.bad_acks = Counter(
            "gateway_uplink_bad_acks",
            "Batch answers without a valid signed acknowledgement (frame kept, retried)",
            ["cluster"],
            registry=r,
        )
        self.attested = Gauge(
            "gateway_cluster_attested",
            "1 when the cluster's quote verified and its key is pinned",
            ["cluster"],
            registry=r,
        )
        self.tls_refused = Counter(
            "gateway_uplink_tls_refused",
            "TLS servers refused: a key other than the one the cluster's quote binds",
            ["cluster"],
            registry=r,
        )
        self.failovers = Counter(
            "gateway_uplink_failovers",
            "Moves of a cluster's uplink from one ingest endpoint to another (failure, "
            "overload or refusal of the one in use)",
            ["cluster"],
            registry=r,
        )
        self.overloaded = Counter(
            "gateway_uplink_overloaded",
            "Answers 503/429 with Retry-After (endpoint held back that long, frames kept)",
            ["cluster"],
            registry=r,
        )
        self.endpoint_up = Gauge(
            "gateway_uplink_endpoint_up",
            "1 while an ingest endpoint of the cluster is attested and not held back",
            ["cluster", "endpoint"],
            registry=r,
        )
        self.attestation_failures = Counter(
            "gateway_attestation_failures",
            "Quotes that failed verification",
            ["cluster"],
            registry=r,
        )
        self.tpm_ok = Gauge(
            "gateway_tpm_ok", "1 when the keys were unsealed from the TPM", registry=r
        )
        self.source_up = Gauge(
            "gateway_source_connected", "1 while a source is connected", ["source"], registry=r
        )
        self.source_errors = Counter(
            "gateway_source_errors", "Source connection errors", ["source"], registry=r
        )
        self.opcua_bad_nodes = Gauge(
            "gateway_opcua_bad_nodes",
            "Nodes that could not be subscribed or report a bad status",
            ["source"],
            registry=r,
        )
        self.sparkplug_rebirths = Counter(
            "gateway_sparkplug_rebirth_requests",
            "NCMD Node Control/Rebirth requests sent (sequence gap, unknown alias, no birth)",
            ["source"],
            registry=r,
        )
        self.sparkplug_stale = Gauge(
            "gateway_sparkplug_stale_sensors",
            "Sensors whose Sparkplug node or device is dead (NDEATH/DDEATH) until its rebirth",
            ["source"],
            registry=r,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
