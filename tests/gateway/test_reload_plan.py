"""The reload plan, case by case (pure: two runtime configs in, actions out)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewayConfig
from gateway.config_yaml import parse_config
from gateway.reload import ReloadRefused, plan_reload

KEY = "ab" * 32
TOPIC = {"filter": "x/+", "sensor_template": "{0}"}
NODE = {"node_id": "ns=2;s=a", "sensor": "a"}
BASE: dict[str, Any] = {
    "gateway_id": "gw",
    "sensors": [{"id": "a", "range": [0, 1]}, {"id": "b", "range": [0, 1]}],
    "clusters": [
        {"index": 0, "url": "https://127.0.0.1:1", "service_id": "p0"},
        {"index": 1, "url": "https://127.0.0.1:2", "service_id": "p1"},
    ],
    "attestation": {"platform_keys": {"k": KEY}, "allowed_measurements": [KEY]},
    "sources": {
        "mqtt": [{"name": "mq", "client_id": "gw", "topics": [TOPIC]}],
        "opcua": [
            {"name": "folders", "url": "opc.tcp://h:4840", "browse": [{"folder": "ns=2;s=F"}]},
            {"name": "explicit", "url": "opc.tcp://h:4841", "nodes": [NODE]},
        ],
    },
}


def _cfg(doc: dict[str, Any]) -> GatewayConfig:
    return parse_config(doc, base=Path("/tmp"))


def test_sensor_added_restarts_browsing_sources_only() -> None:
    """A new sensor: browse sources resubscribe, explicit nodes and MQTT stay."""
    new = copy.deepcopy(BASE)
    new["sensors"].append({"id": "c", "range": [0, 2]})
    plan = plan_reload(_cfg(BASE), _cfg(new))
    assert plan.added == ("c",)
    assert plan.opcua.restart == ("folders",)
    assert plan.opcua.keep == ("explicit",)
    assert plan.mqtt.keep == ("mq",)


def test_changed_range_keeps_every_source() -> None:
    """A range edit within the same scale_range changes validation only."""
    old = copy.deepcopy(BASE)
    old["sensors"][1]["scale_range"] = [0, 8]
    new = copy.deepcopy(old)
    new["sensors"][1]["range"] = [0, 5]
    plan = plan_reload(_cfg(old), _cfg(new))
    assert plan.changed == ("b",)
    assert not plan.opcua.restart
    assert not plan.mqtt.restart


def test_a_range_that_changes_the_sensors_scale_is_refused() -> None:
    """Readings accepted under the old scale may wait in the batcher: no rescale by reload.

    Fails on the code before this change: the reload was applied and the sealer
    went on sharing the sensor in its old scale (or, for a new sensor, unscaled).
    """
    new = copy.deepcopy(BASE)
    new["sensors"][1]["range"] = [0, 24000]
    with pytest.raises(ReloadRefused, match=r"sensors b: .*scale_range"):
        plan_reload(_cfg(BASE), _cfg(new))


def test_new_topics_reconnect_in_place_but_a_new_broker_is_stop_and_start() -> None:
    """Same broker and client id: reconfigure (ledger kept); another broker: a new source."""
    topics = copy.deepcopy(BASE)
    topics["sources"]["mqtt"][0]["topics"].append({"filter": "y/+", "sensor_template": "{0}"})
    assert plan_reload(_cfg(BASE), _cfg(topics)).mqtt.restart == ("mq",)
    broker = copy.deepcopy(BASE)
    broker["sources"]["mqtt"][0]["host"] = "10.0.0.9"
    plan = plan_reload(_cfg(BASE), _cfg(broker))
    assert (plan.mqtt.stop, plan.mqtt.start, plan.mqtt.restart) == (("mq",), ("mq",), ())


@pytest.mark.parametrize(
    ("section", "value"),
    [("clusters", None), ("batching", {"max_readings": 5}), ("gateway_id", "other")],
)
def test_other_sections_are_refused(section: str, value: Any) -> None:
    """Anything but sensors and sources needs a restart; the message names the section."""
    new = copy.deepcopy(BASE)
    if section == "clusters":
        new["clusters"][1]["service_id"] = "p9"
    else:
        new[section] = value
    with pytest.raises(ReloadRefused, match=section):
        plan_reload(_cfg(BASE), _cfg(new))
