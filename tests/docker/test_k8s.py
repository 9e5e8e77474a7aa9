"""Static checks of the Kubernetes manifests in docker/k8s/ (no cluster, no kubectl).

The manifests are notes turned into YAML, never applied here. What these
checks hold them to: every document parses and is a kind this deployment
uses with its stable apiVersion; every namespaced object sits in a declared
trust-domain namespace; each namespace denies all traffic by default and every
allowed connection is opened on both ends (egress at the caller, ingress at
the callee, same ports); each workload runs the compose file's image as a
non-root user with a read-only root, no capabilities and probes on its
/healthz; requests and limits are set; Services and PodDisruptionBudgets
select an existing workload; no Secret carries data; the gateway asks for
the TPM device.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "docker" / "k8s"
API = {
    "Namespace": "v1",
    "Service": "v1",
    "StatefulSet": "apps/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
    "PodDisruptionBudget": "policy/v1",
}
NAME = "app.kubernetes.io/name"
NS_LABEL = "kubernetes.io/metadata.name"


def _docs() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        out.extend(d for d in yaml.safe_load_all(path.read_text()) if d is not None)
    return out


DOCS = _docs()


def _kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in DOCS if d["kind"] == kind]


def _namespaces() -> set[str]:
    return {d["metadata"]["name"] for d in _kind("Namespace")}


def _containers(sts: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = sts["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def test_every_document_is_a_known_kind_in_a_declared_namespace() -> None:
    """Stable apiVersions only; every namespaced object in one of the trust domains."""
    assert len(DOCS) > 20
    namespaces = _namespaces()
    assert {d["metadata"]["labels"]["tecc.io/trust-domain"] for d in _kind("Namespace")} == {
        "plant",
        "party0",
        "party1",
        "dealer",
        "output",
    }
    for d in DOCS:
        assert API.get(d["kind"]) == d["apiVersion"], (d["kind"], d["apiVersion"])
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] in namespaces, d["metadata"]


def test_no_secret_values_in_the_manifests() -> None:
    """Secrets (platform keys, MQTT password) are created out of band, never committed."""
    assert _kind("Secret") == []
    text = "".join(p.read_text() for p in K8S.glob("*.yaml"))
    assert "stringData" not in text
    assert "BEGIN PRIVATE KEY" not in text


def test_workloads_run_the_compose_images_hardened_with_probes_and_resources() -> None:
    """Same images as docker/compose.yaml; non-root, read-only, no capabilities; probes; limits."""
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    images = {s["image"] for s in compose["services"].values()}
    for sts in _kind("StatefulSet"):
        pod = sts["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for c in _containers(sts):
            assert c["image"] in images, c["image"]
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["privileged"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            for key in ("cpu", "memory"):
                assert c["resources"]["requests"][key]
                assert c["resources"]["limits"][key]
        main = pod["containers"][0]
        ports = {p["containerPort"] for p in main["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            handler = main[probe]
            if "httpGet" in handler:
                assert handler["httpGet"]["path"] == "/healthz"
                assert handler["httpGet"]["port"] in ports
            else:  # listeners on the pod's loopback only: probed from inside, like compose
                assert handler["exec"]["command"], main["name"]


def test_services_and_disruption_budgets_select_a_workload() -> None:
    """Each selector matches exactly one StatefulSet's pods, and Service ports exist on it."""
    pods = {
        (s["metadata"]["namespace"], s["spec"]["template"]["metadata"]["labels"][NAME]): s
        for s in _kind("StatefulSet")
    }
    for d in _kind("Service") + _kind("PodDisruptionBudget"):
        ns = d["metadata"]["namespace"]
        selector = d["spec"]["selector"]
        name = (selector.get("matchLabels") or selector)[NAME]
        assert (ns, name) in pods, (d["kind"], ns, name)
        if d["kind"] == "Service":
            container_ports = {
                p["containerPort"]
                for p in pods[(ns, name)]["spec"]["template"]["spec"]["containers"][0]["ports"]
            }
            assert {p["targetPort"] for p in d["spec"]["ports"]} <= container_ports
    assert {
        (d["metadata"]["namespace"], d["spec"]["selector"]["matchLabels"][NAME])
        for d in _kind("PodDisruptionBudget")
    } == set(pods)


def _rules(direction: str) -> set[tuple[str, str, str, str, int]]:
    """(from ns, from app, to ns, to app, port) for every allow rule in ``direction``."""
    out = set()
    peers_key = "from" if direction == "ingress" else "to"
    for pol in _kind("NetworkPolicy"):
        ns = pol["metadata"]["namespace"]
        app = pol["spec"]["podSelector"].get("matchLabels", {}).get(NAME)
        for rule in pol["spec"].get(direction, []):
            for peer in rule[peers_key]:
                other_ns = peer["namespaceSelector"]["matchLabels"][NS_LABEL]
                other_app = peer["podSelector"]["matchLabels"].get(NAME, "*")
                for port in rule["ports"]:
                    if direction == "ingress":
                        out.add((other_ns, other_app, ns, app or "*", port["port"]))
                    else:
                        out.add((ns, app or "*", other_ns, other_app, port["port"]))
    return out


def test_each_trust_domain_denies_by_default_and_opens_links_on_both_ends() -> None:
    """Default deny per namespace; every allowed link has a matching egress and ingress rule.

    Under default deny a one-sided rule is a dead link (or, on the ingress side
    alone, an opening nobody is meant to use): both must agree.
    """
    for ns in _namespaces():
        deny = [
            p
            for p in _kind("NetworkPolicy")
            if p["metadata"]["namespace"] == ns
            and p["spec"]["podSelector"] == {}
            and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress")
            and not p["spec"].get("egress")
        ]
        assert len(deny) == 1, ns
    ingress = _rules("ingress")
    egress = {r for r in _rules("egress") if r[2] != "kube-system"}  # DNS
    assert ingress == egress, (sorted(ingress - egress), sorted(egress - ingress))
    namespaces = _namespaces()
    assert {r[0] for r in ingress} | {r[2] for r in ingress} <= namespaces
    # the clusters reach each other, the dealer and the output; the plant reaches the clusters;
    # no cloud domain opens a connection into the plant except the output's health view
    into_plant = {
        (r[0], r[1], r[4]) for r in ingress if r[2] == "tecc-plant" and r[0] != "tecc-plant"
    }
    assert into_plant == {("tecc-output", "output", 9100)}
    assert ("tecc-plant", "gateway", "tecc-party0", "party0", 8701) in ingress
    assert ("tecc-plant", "gateway", "tecc-party1", "party1", 8702) in ingress


@pytest.mark.parametrize("container", ["gateway", "provision"])
def test_gateway_asks_for_the_tpm_device(container: str) -> None:
    """The gateway's keys are sealed in the node's TPM: it requests the device resource."""
    [gw] = [s for s in _kind("StatefulSet") if s["metadata"]["name"] == "gateway"]
    [c] = [c for c in _containers(gw) if c["name"] == container]
    assert c["resources"]["limits"]["tecc.io/tpm"] == "1"
    assert gw["spec"]["template"]["spec"]["nodeSelector"] == {"tecc.io/tpm": "true"}
