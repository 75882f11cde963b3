"""(b) The Machine service on the happy path, through the Prism validating proxy.

Every request the driver sends to the Metal API, and every answer of the simulator, is
checked against the official OpenAPI spec by Prism (a violation fails the test, see the
conftest guard); the tap lets the tests see what the driver asked for.
"""

from __future__ import annotations

import json
import time
import urllib.parse
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

    # The create request leaves out unset optional fields instead of sending zero values
    # (notes/metal-api.md: `always_pxe: false` broke creates, an empty
    # `hardware_reservation_id` had to go), and carries what the spec asked for.
    posts = [e for e in main_stack.tap.exchanges if e.method == "POST" and e.route == f"/projects/{PROJECT}/devices"
             and isinstance(e.request_json, dict) and e.request_json.get("hostname") == name]
    assert len(posts) == 1, [e.describe() for e in posts]
    body = posts[0].request_json
    zero = {k: v for k, v in body.items() if v in (None, "", [], {}, False)}
    assert not zero, f"create body sends unset fields: {zero}"
    assert {k: body.get(k) for k in ("metro", "plan", "operating_system", "billing_cycle")} == {
        "metro": "sv", "plan": "c3.small.x86", "operating_system": "ubuntu_22_04", "billing_cycle": "hourly"}
    assert "userdata" in body and "facility" not in body

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
    tag_q = "tag=" + urllib.parse.quote(f"kubernetes.io/cluster/{cluster}", safe="")
    assert all(tag_q in e.query for e in pages), "ListMachines should filter by the cluster tag server-side (design §6):\n" + \
        "\n".join(e.path for e in pages)
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


def test_facilities_are_honoured(main_stack, cluster):
    """`facilities` (Gardener's field, ignored by the Go provider) becomes the create's
    `facility` list, and exactly one of metro/facility is sent (both would fail oneOf)."""
    c, api, tap = main_stack.client, main_stack.api(), main_stack.tap
    spec = provider_spec(cluster, metro=None, facilities=["da11"])
    mark = tap.mark()
    r = c.create(f"{cluster}-f", spec)
    dev = api.get_device(device_uuid(r.ProviderID)).json()
    assert dev["facility"]["code"] == "da11" and dev["metro"]["code"] == "da"
    post = [e for e in tap.since(mark) if e.method == "POST" and e.route == f"/projects/{PROJECT}/devices"][-1]
    assert post.request_json.get("facility") == ["da11"] and "metro" not in post.request_json, post.describe()
    c.delete(f"{cluster}-f", spec, r.ProviderID)


def test_ipxe_script_url_without_os(main_stack, cluster):
    c, api, tap = main_stack.client, main_stack.api(), main_stack.tap
    url = "http://127.0.0.1:9/boot.ipxe"
    spec = provider_spec(cluster, OS=None, ipxeScriptUrl=url)
    mark = tap.mark()
    r = c.create(f"{cluster}-ipxe", spec)
    post = [e for e in tap.since(mark) if e.method == "POST" and e.route == f"/projects/{PROJECT}/devices"][-1]
    assert post.request_json.get("operating_system") == "custom_ipxe", post.describe()
    assert post.request_json.get("ipxe_script_url") == url, post.describe()
    assert api.get_device(device_uuid(r.ProviderID)).json()["operating_system"]["slug"] == "custom_ipxe"
    c.delete(f"{cluster}-ipxe", spec, r.ProviderID)


@pytest.mark.parametrize("form", ["legacy-metro", "packet", "bare-uuid"])
def test_legacy_provider_id_forms_are_accepted(main_stack, cluster, form):
    """design §5: decode also accepts `equinixmetal://<metro>/<uuid>` (the Go provider's
    format), `packet://<uuid>` and a bare UUID; answers use the canonical form."""
    c = main_stack.client
    spec = provider_spec(cluster)
    r = c.create(f"{cluster}-l", spec)
    dev_id = device_uuid(r.ProviderID)
    legacy = {"legacy-metro": f"equinixmetal://sv/{dev_id}", "packet": f"packet://{dev_id}", "bare-uuid": dev_id}[form]
    got = c.status(f"{cluster}-l", spec, legacy)
    assert got.ProviderID == r.ProviderID
    c.delete(f"{cluster}-l", spec, legacy)
    _wait_not_found(c, f"{cluster}-l", spec, r.ProviderID)


def test_two_devices_for_one_machine_is_out_of_range(main_stack, cluster):
    """A second device claiming the same machine (same hostname, identity and cluster tags,
    e.g. left over by a lost create elsewhere) makes a by-name lookup ambiguous: OUT_OF_RANGE
    (design §6), never a silent pick."""
    c, api, tap = main_stack.client, main_stack.api(), main_stack.tap
    spec = provider_spec(cluster)
    name = f"{cluster}-dup"
    mark = tap.mark()
    r = c.create(name, spec)
    post = [e for e in tap.since(mark) if e.method == "POST" and e.route == f"/projects/{PROJECT}/devices"][-1]
    tags = post.request_json["tags"]
    twin = api.create_device(hostname=name, tags=tags, **{k: post.request_json[k] for k in ("metro", "plan", "operating_system")})
    err = rpc_error(c.status, name, spec)
    assert err.code() == grpc.StatusCode.OUT_OF_RANGE, f"{err.code()} {err.details()}"
    # by ProviderID it is unambiguous
    assert c.status(name, spec, r.ProviderID).ProviderID == r.ProviderID
    assert api.delete_device(twin["id"]) == 204
    c.delete(name, spec, r.ProviderID)


def test_concurrent_creates_of_one_machine_make_one_device(main_stack, cluster):
    """MCM may call CreateMachine again while one is in flight: each call returns the same
    device or ABORTED (design §6 in-flight guard), and exactly one device exists."""
    from concurrent.futures import ThreadPoolExecutor

    c, api = main_stack.client, main_stack.api()
    spec = provider_spec(cluster)
    name = f"{cluster}-cc"

    def one(_):
        try:
            return ("OK", c.create(name, spec).ProviderID)
        except grpc.RpcError as e:
            return (e.code().name, e.details())

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(6)))
    oks = {pid for code, pid in results if code == "OK"}
    assert all(code in ("OK", "ABORTED") for code, _ in results), results
    assert len(oks) == 1, results
    devices = api.devices(tag=f"kubernetes.io/cluster/{cluster}")
    assert [d["id"] for d in devices] == [device_uuid(oks.pop())], f"{len(devices)} devices for one machine"
    c.delete(name, spec, PROVIDER_ID_PREFIX + devices[0]["id"])
