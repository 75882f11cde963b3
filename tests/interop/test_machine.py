"""(b) The Machine service on the happy path, through the Prism validating proxy.

Every request the driver sends to the Metal API, and every answer of the simulator, is
checked against the official OpenAPI spec by Prism (a violation fails the test, see the
conftest guard); the tap lets the tests see what the driver asked for.
"""

from __future__ import annotations

import json
import time
import uuid

import grpc
import pytest

from cmiclient import PROVIDER_ID_PREFIX, device_uuid, provider_spec, rpc_error, secrets
from conftest import PER_PAGE_MAX, PROJECT, RESERVATION_DA, RESERVATION_SV


def _wait_not_found(client, name, spec, provider_id, timeout=20.0):
    """GetMachineStatus until NOT_FOUND; meanwhile only OK (still deprovisioning) is acceptable."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.status(name, spec, provider_id)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, f"after delete: {e.code()} {e.details()}"
            return e
        assert time.monotonic() < deadline, f"{name} still found {timeout}s after DeleteMachine"
        time.sleep(0.25)


def test_lifecycle_create_status_list_shutdown_delete(main_stack, cluster):
    c, api = main_stack.client, main_stack.api()
    spec = provider_spec(cluster)
    name = f"{cluster}-m0"

    created = c.create(name, spec)
    assert created.ProviderID.startswith(PROVIDER_ID_PREFIX), created.ProviderID
    dev_id = device_uuid(created.ProviderID)
    uuid.UUID(dev_id)
    assert created.NodeName == name

    # The device really exists, as asked for.
    dev = api.get_device(dev_id).json()
    assert dev["hostname"] == name
    assert f"kubernetes.io/cluster/{cluster}" in dev["tags"] and "kubernetes.io/role/node" in dev["tags"]
    assert dev["plan"]["slug"] == "c3.small.x86"
    assert dev["metro"]["code"] == "sv"
    assert dev["operating_system"]["slug"] == "ubuntu_22_04"

    # Status by ProviderID, and by name only (lookup by tags/hostname).
    by_id = c.status(name, spec, created.ProviderID)
    assert (by_id.ProviderID, by_id.NodeName) == (created.ProviderID, name)
    by_name = c.status(name, spec)
    assert (by_name.ProviderID, by_name.NodeName) == (created.ProviderID, name)

    listed = c.list(spec)
    assert dict(listed.MachineList) == {created.ProviderID: name}

    api.wait_state(dev_id, {"active"})
    c.shutdown(name, spec, created.ProviderID)
    posted = [e for e in main_stack.tap.exchanges if e.method == "POST" and e.route == f"/devices/{dev_id}/actions"]
    assert posted and posted[-1].request_json == {"type": "power_off"} and posted[-1].status == 202, [e.describe() for e in posted]
    state = api.wait_state(dev_id, {"powering_off", "inactive"})["state"]
    assert state in ("powering_off", "inactive")

    c.delete(name, spec, created.ProviderID)
    err = _wait_not_found(c, name, spec, created.ProviderID)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    # by name only, too
    assert rpc_error(c.status, name, spec).code() == grpc.StatusCode.NOT_FOUND
    # DeleteMachine of a device that is gone is OK (MCM retries deletes).
    c.delete(name, spec, created.ProviderID)
    c.delete(name, spec)
    assert dict(c.list(spec).MachineList) == {}


def test_retried_create_returns_the_same_device(main_stack, cluster):
    c, api = main_stack.client, main_stack.api()
    spec = provider_spec(cluster)
    name = f"{cluster}-idem"
    first = c.create(name, spec)
    for _ in range(2):
        again = c.create(name, spec)
        assert again.ProviderID == first.ProviderID
        assert again.NodeName == first.NodeName
    devices = api.devices(tag=f"kubernetes.io/cluster/{cluster}")
    assert [d["id"] for d in devices] == [device_uuid(first.ProviderID)], "a retried CreateMachine made a second device"
    c.delete(name, spec, first.ProviderID)


def test_list_spans_pages(main_stack, cluster):
    """More devices than the server's page size: ListMachines must follow every page.
    Seven machines come from the driver, five are made directly through the API (other
    tools' devices with the cluster tags count too, design §5), and one device of another
    cluster must not appear."""
    c, api = main_stack.client, main_stack.api()
    spec = provider_spec(cluster)
    tags = spec["tags"]
    want = {}
    for i in range(7):
        r = c.create(f"{cluster}-d{i}", spec)
        want[r.ProviderID] = f"{cluster}-d{i}"
    for i in range(5):
        d = api.create_device(metro="sv", plan="c3.small.x86", operating_system="ubuntu_22_04",
                              hostname=f"{cluster}-x{i}", tags=tags, billing_cycle="hourly")
        want[PROVIDER_ID_PREFIX + d["id"]] = f"{cluster}-x{i}"
    other = api.create_device(metro="sv", plan="c3.small.x86", operating_system="ubuntu_22_04",
                              hostname=f"{cluster}-foreign", tags=[f"kubernetes.io/cluster/{cluster}-other", "kubernetes.io/role/node"])
    assert len(want) == 12 > 2 * PER_PAGE_MAX

    mark = main_stack.tap.mark()
    got = dict(c.list(spec).MachineList)
    assert got == want, f"missing {set(want) - set(got)}; extra {set(got) - set(want)}"
    pages = [e for e in main_stack.tap.since(mark) if e.method == "GET" and e.route == f"/projects/{PROJECT}/devices"]
    assert len(pages) >= 3, "12 devices at ≤5 per page need at least 3 list requests:\n" + "\n".join(e.describe() for e in pages)
    assert all(e.status == 200 for e in pages)
    assert PROVIDER_ID_PREFIX + other["id"] not in got

    for pid, name in want.items():
        c.delete(name, spec, pid)
    api.delete_device(other["id"])


def test_create_on_hardware_reservation_then_reserved_only(main_stack, cluster):
    """reservationIDs are tried in order; the device lands on the reservation. Once the
    reservation is taken, reservedDevicesOnly gives RESOURCE_EXHAUSTED, and without it the
    driver falls back to on-demand *without* carrying the reservation ID (the Go provider's
    bug, notes/metal-api.md §'Notes on existing Go clients' 4)."""
    c, api, tap = main_stack.client, main_stack.api(), main_stack.tap
    spec = provider_spec(cluster, machineType="c3.medium.x86", reservationIDs=[RESERVATION_SV])

    r1 = c.create(f"{cluster}-r1", spec)
    dev = api.get_device(device_uuid(r1.ProviderID)).json()
    hr = dev.get("hardware_reservation") or {}
    assert hr.get("id") == RESERVATION_SV or RESERVATION_SV in hr.get("href", ""), f"device not on the reservation: {hr}"
    creates = [e for e in tap.exchanges if e.method == "POST" and e.route == f"/projects/{PROJECT}/devices"
               and isinstance(e.request_json, dict) and e.request_json.get("hostname") == f"{cluster}-r1"]
    assert creates and creates[-1].request_json.get("hardware_reservation_id") == RESERVATION_SV

    only = dict(spec, reservedDevicesOnly=True)
    err = rpc_error(c.create, f"{cluster}-r2", only)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, f"{err.code()} {err.details()}"
    assert all(d["hostname"] != f"{cluster}-r2" for d in api.devices(tag=f"kubernetes.io/cluster/{cluster}")), \
        "RESOURCE_EXHAUSTED, yet a device was made"

    mark = tap.mark()
    r3 = c.create(f"{cluster}-r3", spec)
    dev3 = api.get_device(device_uuid(r3.ProviderID)).json()
    assert not (dev3.get("hardware_reservation") or {}).get("id"), "fallback device should be on-demand"
    posts = [e for e in tap.since(mark) if e.method == "POST" and e.route == f"/projects/{PROJECT}/devices"]
    assert posts, "no create request seen"
    last = posts[-1]
    assert last.status == 201 and "hardware_reservation_id" not in last.request_json, (
        "on-demand fallback must not carry a reservation ID:\n" + last.describe())

    for n, r in ((f"{cluster}-r1", r1), (f"{cluster}-r3", r3)):
        c.delete(n, spec, r.ProviderID)


def test_create_with_next_available_reservation(main_stack, cluster):
    c, api = main_stack.client, main_stack.api()
    spec = provider_spec(cluster, metro="da", machineType="c3.small.x86", reservationIDs=["next-available"], reservedDevicesOnly=True)
    r = c.create(f"{cluster}-n1", spec)
    hr = api.get_device(device_uuid(r.ProviderID)).json().get("hardware_reservation") or {}
    assert hr.get("id") == RESERVATION_DA or RESERVATION_DA in hr.get("href", ""), hr
    c.delete(f"{cluster}-n1", spec, r.ProviderID)


def test_project_id_from_secret(main_stack, cluster):
    """projectID may come from the credentials Secret instead of the providerSpec (design §4)."""
    c = main_stack.client
    spec = provider_spec(cluster, projectID=None)
    sec = secrets(projectID=PROJECT)
    r = c.create(f"{cluster}-s1", spec, sec)
    assert c.status(f"{cluster}-s1", spec, r.ProviderID, sec).ProviderID == r.ProviderID
    assert dict(c.list(spec, sec).MachineList) == {r.ProviderID: f"{cluster}-s1"}
    c.delete(f"{cluster}-s1", spec, r.ProviderID, sec)


def test_alternate_api_token_is_used(main_stack, cluster):
    """`alternateApiToken` is a real fallback (the Go provider validated but never used it)."""
    c = main_stack.client
    spec = provider_spec(cluster)
    sec = secrets(token=None, alternateApiToken="sim-token")
    r = c.create(f"{cluster}-alt", spec, sec)
    c.delete(f"{cluster}-alt", spec, r.ProviderID, sec)


@pytest.mark.parametrize("pv_specs", [b"[]", json.dumps([{"csi": {"driver": "example.csi", "volumeHandle": "vol-1"}}]).encode()],
                         ids=["empty", "csi"])
def test_get_volume_ids(main_stack, pv_specs):
    resp = main_stack.client.volume_ids(pv_specs)
    assert list(resp.VolumeIDs) == [], "Metal has no cloud volumes: nothing to map"
