"""The dashboard in a real headless Chromium against a real deployment: it shows what the API says.

Every table the page renders is compared with the API's answer for the same
time range (the page publishes the range it used on ``<body data-since
data-until>``), after each control the user can touch.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from playwright.sync_api import Page, expect

from tests.support.browser import chromium

from .scenario import GATEWAYS, POLICY, gateways, make_scenario, upload_all, wait_epochs
from .services import Deployment, http_json

NONZERO = re.compile(r"^[1-9][0-9]*$")
pytestmark = [pytest.mark.processes, pytest.mark.browser, pytest.mark.slow]


def _fmt(v: float | None, d: int = 3) -> str:
    return "—" if v is None else f"{v:.{d}f}"


def _until(check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    """Poll ``check`` (the page's CSP forbids Playwright's eval-based waits)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"dashboard: {what} within {timeout_s} s")
        time.sleep(0.2)


def _api(dep: Deployment, path: str, **params: Any) -> Any:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    status, body = http_json(f"{dep.url('output')}/api/v1/{path}?{query}")
    assert status == 200, body
    return body


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Four gateways' known readings, reconstructed by a real deployment (gw-d runs +10 °C)."""
    root = tmp_path_factory.mktemp("dash")
    dep = Deployment(
        root,
        POLICY,
        {g: Ed25519PrivateKey.generate() for g in GATEWAYS},
        output_extra={"units": {"temp*": "°C", "press*": "hPa"}},
    )
    scn = make_scenario()
    try:
        dep.start_all()
        upload_all(gateways(dep), scn, range(scn.seconds))
        wait_epochs(dep, 3)
        yield dep
    finally:
        dep.stop_all()


def _sign_in(page: Page, dep: Deployment) -> None:
    link = (dep.state_dir("output") / "signin-link").read_text().strip()
    page.goto(link)


def _range(page: Page) -> tuple[str, str]:
    body = page.locator("body")
    expect(body).to_have_attribute("data-since", re.compile(r"\d"))
    return body.get_attribute("data-since") or "", body.get_attribute("data-until") or ""


def _rows(page: Page, table: str) -> list[list[str]]:
    return [r.locator("td").all_text_contents() for r in page.locator(f"#{table} tbody tr").all()]


def _check_chart(
    page: Page, dep: Deployment, gateway: str, sensor: str, detector: str | None = None
) -> None:
    since, until = _range(page)
    api = _api(dep, "windows", sensor=sensor, gateway=gateway, since=since, until=until, points=600)
    assert api, "the scenario releases windows of every sensor"
    expect(page.locator("#chart")).to_have_attribute("data-points", str(len(api)))
    starts = page.locator("#chart-data tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.start)"
    )
    assert starts == [str(w["start_ns"]) for w in api]
    shown = [row[1:] for row in _rows(page, "chart-data")]
    assert shown == [
        [str(w["count"]), _fmt(w["mean"]), _fmt(w["std"]), _fmt(w["min"]), _fmt(w["max"])]
        for w in api
    ]
    span_end = api[-1]["start_ns"] + api[-1]["window_ns"]
    flags = [
        a
        for a in _api(dep, "alerts", since=since, until=until, detector=detector)
        if a["gateway"] == gateway
        and a["sensor"] == sensor
        and api[0]["start_ns"] <= a["ts_ns"] <= span_end
    ]
    expect(page.locator("#chart")).to_have_attribute("data-alerts", str(len(flags)))


def _check_fleet(page: Page, dep: Deployment) -> None:
    since, until = _range(page)
    fleet = _api(dep, "fleet", since=since, until=until)
    windows = _api(dep, "windows", since=since, until=until)
    deviating: dict[int, list[str]] = {}
    for w in windows:
        if w["deviates_from_fleet"]:
            deviating.setdefault(w["start_ns"], []).append(f"{w['gateway']}:{w['sensor']}")
    expected = [
        [
            f["class"],
            str(f["count"]),
            _fmt(f["mean"]),
            _fmt(f["std"]),
            ", ".join(deviating.get(f["start_ns"], [])) or "none",
        ]
        for f in reversed(fleet[-60:])
    ]
    page.locator("#fleet tbody tr").first.wait_for()
    shown = [[r[0], *r[2:]] for r in _rows(page, "fleet")]
    assert shown == expected
    assert any("gw-d:temp1" in r[-1] for r in shown), "gw-d runs 10 °C above its fleet"


def _check_alerts(page: Page, dep: Deployment, detector: str | None) -> None:
    since, until = _range(page)
    api = _api(dep, "alerts", since=since, until=until, detector=detector)
    expected = [str(a["ts_ns"]) for a in reversed(api[-300:])]
    _until(
        lambda: (
            page.locator("#alerts tbody tr").evaluate_all("rs => rs.map(r => r.dataset.ts)")
            == expected
        ),
        f"alert rows equal the API's ({detector or 'all'})",
    )
    dets = {r[3] for r in _rows(page, "alerts")}
    assert dets == {a["detector"] for a in api}


def _check_incidents(page: Page, dep: Deployment, **filters: str) -> list[dict[str, Any]]:
    since, until = _range(page)
    api = _api(dep, "incidents", since=since, until=until, limit=200, **filters)
    expected = [str(i["id"]) for i in api]
    _until(
        lambda: (
            page.locator("#incidents tbody tr").evaluate_all("rs => rs.map(r => r.dataset.id)")
            == expected
        ),
        f"incident rows equal the API's ({filters})",
    )
    for row, inc in zip(_rows(page, "incidents"), api, strict=True):
        assert row[:4] == [inc["state"], inc["gateway"], inc["sensor"], inc["detector"]]
        assert row[6] == str(inc["flags"])
    return list(api)


def _check_clusters(page: Page, dep: Deployment) -> None:
    """Each cluster card names the shards the API lists for it, with their newest epoch."""
    api = _api(dep, "clusters")
    expected = [",".join(f"{s['shard']}:{s['last_epoch_ns']}" for s in c["shards"]) for c in api]
    assert all(expected), "every cluster released at least one shard's epoch"
    _until(
        lambda: (
            page.locator("#clusters .card .shards").evaluate_all(
                "es => es.map(e => e.dataset.shards)"
            )
            == expected
        ),
        "cluster cards name the API's shards",
    )
    expect(page.locator("#clusters .card .shards").first).to_contain_text("#0 released")


def test_dashboard_shows_what_the_api_says(deployment: Deployment, tmp_path: Path) -> None:
    """Chart points, flag rows, incidents and the fleet table equal the API's, after each control.

    Fails on the code before this change: the fleet column read ``w.deviates``
    (the API says ``deviates_from_fleet``) and showed "none" for gw-d.
    """
    dep = deployment
    errors: list[str] = []
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900}, timezone_id="UTC")
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        _sign_in(page, dep)
        page.goto(dep.url("output") + "/?sensor=gw-d/temp1")
        expect(page.locator("#live")).to_have_text(re.compile(r"^live"))
        expect(page.locator("#whoami")).to_have_text("admin (admin)")
        expect(page.locator("#chart")).to_have_attribute("data-unit", "°C")
        _check_chart(page, dep, "gw-d", "temp1")
        _check_clusters(page, dep)
        _check_fleet(page, dep)
        _check_alerts(page, dep, None)
        # the detector filter
        page.select_option("#detector", "limit")
        _check_alerts(page, dep, "limit")
        # the sensor switch
        page.select_option("#sensor", "gw-a/temp1")
        _check_chart(page, dep, "gw-a", "temp1", "limit")
        expect(page.locator("#chart")).to_have_attribute("data-alerts", NONZERO)
        page.select_option("#detector", "")
        _check_chart(page, dep, "gw-a", "temp1")
        # incidents: all, then filtered by detector and gateway
        assert _check_incidents(page, dep)
        page.select_option("#inc-detector", "rate")
        rate = _check_incidents(page, dep, detector="rate")
        assert rate
        assert {i["detector"] for i in rate} == {"rate"}
        page.select_option("#inc-gateway", "gw-a")
        _check_incidents(page, dep, detector="rate", gateway="gw-a")
        # acknowledge (the admin is an operator too)
        target = rate[0]["id"]
        page.locator(f"#incidents tr[data-id='{target}'] button.ack").click()
        _until(
            lambda: _api(dep, "incidents", detector="rate")[0]["acknowledged_by"] == "admin",
            "acknowledged in the API",
        )
        expect(page.locator(f"#incidents tr[data-id='{target}']")).to_contain_text("ack: admin")
        # drill-down: the incident's kept flags, as the API lists them
        page.locator(f"#incidents tr[data-id='{target}'] button.drill").click()
        flags = _api(dep, f"incidents/{target}/flags", limit=1000)
        assert len(flags) == rate[0]["flags"]
        _until(
            lambda: (
                page.locator("#incident-flags tbody tr").evaluate_all(
                    "rs => rs.map(r => r.dataset.ts)"
                )
                == [str(f["ts_ns"]) for f in flags]
            ),
            "drill-down rows equal the API's",
        )
        # the time range picker: 5 min shows the same newest windows, via the same API range
        page.select_option("#range", "300")
        newest = max(w["start_ns"] for w in _api(dep, "windows")) // 1_000_000_000
        expect(page.locator("body")).to_have_attribute("data-since", str(newest - 300))
        _check_chart(page, dep, "gw-a", "temp1")
        page.select_option("#range", "custom")
        page.fill("#range-from", "2023-11-14T22:13:30")
        page.fill("#range-to", "2023-11-14T22:13:40")
        page.click("#range-apply")
        expect(page.locator("body")).to_have_attribute("data-until", "1700000020")
        _check_chart(page, dep, "gw-a", "temp1")
        expect(page.locator("#chart")).to_have_attribute("data-points", "1")
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    assert errors == []


def test_dashboard_sign_in_is_required(deployment: Deployment) -> None:
    """No session → the sign-in page; a wrong token is refused; the admin token signs in.

    Fails on the code before this change: the page and API answered anyone.
    """
    dep = deployment
    token = dep.output_token_file.read_text().strip()
    with chromium() as browser:
        page = browser.new_page()
        page.goto(dep.url("output") + "/")
        expect(page).to_have_url(re.compile(r"/auth/signin$"))
        page.fill("#token", "tecc_wrong")
        page.click("button[type=submit]")
        expect(page.locator("#signin-error")).to_have_text(re.compile("not valid"))
        page.fill("#token", token)
        page.click("button[type=submit]")
        expect(page.locator("#whoami")).to_have_text("admin (admin)")
        cookie = next(c for c in page.context.cookies() if c["name"] == "tecc_session")
        assert cookie["httpOnly"]
        assert cookie["secure"]
        assert cookie["sameSite"] == "Lax"
        page.click("#signout")
        expect(page).to_have_url(re.compile(r"/auth/signin$"))
        resp = page.request.get(dep.url("output") + "/api/v1/windows")
        assert resp.status == 401


def test_dashboard_shows_not_verified_and_error(tmp_path: Path) -> None:
    """A cluster that stops answering turns "not verified"; a dead output service shows "error"."""
    dep = Deployment(tmp_path, POLICY, {g: Ed25519PrivateKey.generate() for g in GATEWAYS})
    try:
        dep.start_all()
        with chromium() as browser:
            page = browser.new_page()
            _sign_in(page, dep)
            page.goto(dep.url("output") + "/")
            cards = page.locator("#clusters .card .state")
            _until(lambda: cards.all_inner_texts() == ["verified", "verified"], "both verified")
            dep.stop("party1")
            _until(
                lambda: cards.all_inner_texts() == ["verified", "not verified"],
                "party1 not verified",
                30,
            )
            dep.stop("output")
            expect(page.locator("#live")).to_have_text(re.compile(r"^error: "), timeout=20_000)
            expect(page.locator("#live")).to_have_class("bad")
    finally:
        dep.stop_all()
