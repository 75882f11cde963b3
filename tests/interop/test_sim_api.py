"""The simulator's Metal API, called directly (no driver) through the Prism proxy.

The driver-facing tests only reach the answers the driver asks for. These cover the rest
of what design §8 says the simulator implements, so each of its answers is validated
against the spec: error bodies for 401/403/404/422, PUT (locked) and the locked-delete
422, every power action, pagination `meta` at and past the last page, `include`/`exclude`,
the deprecated `facility` create variant, and the `/metal/v1` prefix.
"""

from __future__ import annotations

import uuid

import pytest
import requests

from conftest import OTHER_PROJECT, OTHER_TOKEN, PER_PAGE_MAX, PROJECT

BASE_DEVICE = {"metro": "sv", "plan": "c3.small.x86", "operating_system": "ubuntu_22_04", "billing_cycle": "hourly"}


def _error_message(r: requests.Response) -> str:
    body = r.json()
    assert isinstance(body, dict) and ("error" in body or "errors" in body), f"not an Error body: {r.text[:300]}"
    msg = body.get("error") or "; ".join(body.get("errors") or [])
    assert msg, f"empty error message: {body}"
    return msg


@pytest.fixture
def api(main_stack):
    return main_stack.api()


@pytest.fixture
def device(api, cluster):
    d = api.create_device(hostname=f"{cluster}-d", tags=[f"kubernetes.io/cluster/{cluster}"], **BASE_DEVICE)
    yield d
    api.s.put(f"{api.base}/devices/{d['id']}", json={"locked": False}, timeout=30)
    api.delete_device(d["id"])


def test_created_device_shape(device):
    assert device["state"] in ("queued", "provisioning")
    assert device["plan"]["slug"] == "c3.small.x86" and device["metro"]["code"] == "sv"
    assert device["operating_system"]["slug"] == "ubuntu_22_04"
    for k, v in device.items():
        assert v is not None, f"{k}: null (the spec marks nothing nullable; omit it instead)"


@pytest.mark.parametrize("headers", [{}, {"X-Auth-Token": "wrong"}], ids=["missing", "wrong"])
def test_401_has_error_body(main_stack, headers):
    """A missing token never reaches the sim (Prism answers 401 itself and that is a request
    violation), so 'missing' goes straight to the sim, 'wrong' through Prism."""
    base = main_stack.sim_url if not headers else main_stack.api_url
    r = requests.get(f"{base}/projects/{PROJECT}/devices", headers=headers, timeout=30)
    assert r.status_code == 401
    _error_message(r)


def test_403_for_a_project_the_token_may_not_use(main_stack):
    r = main_stack.api(token=OTHER_TOKEN).s.get(f"{main_stack.api_url}/projects/{PROJECT}/devices", timeout=30)
    assert r.status_code == 403, r.text[:300]
    _error_message(r)
    ok = main_stack.api(token=OTHER_TOKEN, project=OTHER_PROJECT).devices()
    assert isinstance(ok, list)


def test_404_for_unknown_device_and_project(api):
    r = api.get_device(str(uuid.uuid4()))
    assert r.status_code == 404
    _error_message(r)
    r = api.s.get(f"{api.base}/projects/{uuid.uuid4()}/devices", timeout=30)
    assert r.status_code in (403, 404), r.status_code
    _error_message(r)
    assert api.delete_device(str(uuid.uuid4())) == 404


@pytest.mark.parametrize("field,value", [("plan", "z9.nonexistent.x86"), ("operating_system", "beos_5"), ("metro", "zz")])
def test_422_for_unknown_plan_os_metro(api, field, value):
    r = api.s.post(f"{api.base}/projects/{PROJECT}/devices", json=dict(BASE_DEVICE, **{field: value}), timeout=30)
    assert r.status_code == 422, r.text[:300]
    _error_message(r)


def test_facility_variant_of_create(api, cluster):
    d = api.create_device(facility=["da11"], plan="c3.small.x86", operating_system="ubuntu_22_04",
                          hostname=f"{cluster}-f", tags=[f"kubernetes.io/cluster/{cluster}"])
    assert d["facility"]["code"] == "da11"
    assert d["metro"]["code"] == "da"
    api.delete_device(d["id"])


def test_locked_device_cannot_be_deleted_until_unlocked(api, device):
    url = f"{api.base}/devices/{device['id']}"
    r = api.s.put(url, json={"locked": True}, timeout=30)
    assert r.status_code == 200 and r.json()["locked"] is True
    r = api.s.delete(url, timeout=30)
    assert r.status_code == 422, f"delete of a locked device: {r.status_code}"
    _error_message(r)
    r = api.s.put(url, json={"locked": False, "description": "unlocked by the conformance suite"}, timeout=30)
    assert r.status_code == 200 and r.json()["locked"] is False
    assert r.json()["description"] == "unlocked by the conformance suite"


@pytest.mark.parametrize("action", ["power_off", "power_on", "reboot"])
def test_power_actions(api, device, action):
    api.wait_state(device["id"], {"active"})
    if action == "power_on":
        assert api.s.post(f"{api.base}/devices/{device['id']}/actions", json={"type": "power_off"}, timeout=30).status_code == 202
        api.wait_state(device["id"], {"inactive"})
    r = api.s.post(f"{api.base}/devices/{device['id']}/actions", json={"type": action}, timeout=30)
    assert r.status_code == 202, r.text[:300]
    want = {"power_off": {"powering_off", "inactive"}, "power_on": {"powering_on", "active"}, "reboot": {"active", "powering_off", "powering_on"}}[action]
    api.wait_state(device["id"], want)


def test_pagination_meta(api, cluster):
    tag = f"kubernetes.io/cluster/{cluster}"
    ids = [api.create_device(hostname=f"{cluster}-p{i}", tags=[tag], **BASE_DEVICE)["id"] for i in range(PER_PAGE_MAX + 2)]
    url = f"{api.base}/projects/{PROJECT}/devices"
    r = api.s.get(url, params={"tag": tag, "per_page": 1000}, timeout=30)
    body = r.json()
    assert len(body["devices"]) == PER_PAGE_MAX, "per_page above the server's maximum is capped"
    meta = body["meta"]
    assert meta["total"] == PER_PAGE_MAX + 2 and meta["current_page"] == 1 and meta["last_page"] == 2, meta
    assert "next" in meta and "href" in meta["next"]
    r2 = api.s.get(url, params={"tag": tag, "per_page": 1000, "page": 2}, timeout=30).json()
    assert len(r2["devices"]) == 2 and r2["meta"]["current_page"] == 2
    assert "next" not in r2["meta"], "at the last page `next` is left out (null would break the spec)"
    assert sorted(d["id"] for d in body["devices"] + r2["devices"]) == sorted(ids)
    r3 = api.s.get(url, params={"tag": tag, "per_page": 1000, "page": 3}, timeout=30)
    assert r3.status_code == 200 and r3.json()["devices"] == []
    for i in ids:
        api.delete_device(i)


def test_include_exclude_are_accepted(api, device):
    r = api.s.get(f"{api.base}/devices/{device['id']}", params={"include": "project,facility", "exclude": "ip_addresses"}, timeout=30)
    assert r.status_code == 200 and r.json()["id"] == device["id"]


def test_metal_v1_prefix_is_served(main_stack, device):
    """The sim serves at the root (for Prism) and under /metal/v1 (the real base path)."""
    r = requests.get(f"{main_stack.sim_url}/metal/v1/devices/{device['id']}", headers={"X-Auth-Token": "sim-token"}, timeout=30)
    assert r.status_code == 200 and r.json()["id"] == device["id"]


def test_sim_stats(main_stack):
    r = requests.get(f"{main_stack.sim_url}/_sim/stats", timeout=10)
    assert r.status_code == 200 and isinstance(r.json(), dict)
