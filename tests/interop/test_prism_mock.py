"""(e) The driver against `prism mock`: no simulator, only examples generated from the spec.

Prism's static mock answers every device call with the same Device, generated from the
spec's schema: `format: uuid` gets Prism's fixed sample id, `state` the first enum value
(`queued`), strings "string", numbers extreme floats, every optional object filled in.
The point is that our client decodes anything the spec allows and sends only what the
spec accepts (Prism runs with --errors; the conftest guard scans its log), independently
of our own simulator.

One adjustment, and why: the spec has no device example, so the mock's device would have
`tags: ["string"]`, and the driver refuses to act by ProviderID on a device outside the
class's cluster (design §5: FAILED_PRECONDITION "lacks the tag kubernetes.io/cluster/…").
The mock is therefore started on the bundled spec plus one `example` for `Device.tags`
(our cluster's tags). Examples play no part in validation; `test_overlay_only_adds_an_example`
proves that nothing else differs. (An `example` on `Device.state` is ignored by Prism's
sampler, which takes the first enum value, so the device is always `queued`.)

Known limit of the mock that the assertions respect: the example `meta` has
`next: {href: "string"}` and `current_page = last_page = 0`; a client that follows
`meta.next` blindly would loop; the Go SDK's stop rule (`current_page >= last_page`) ends
after one page.
"""

from __future__ import annotations

import json
import re
import uuid

import grpc
import pytest
import requests
import yaml

from cmiclient import PROVIDER_ID_PREFIX, provider_spec, rpc_error
from conftest import LOG_DIR, MOCK_CLUSTER, MOCK_TAGS, SPEC

UUID_RX = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
SPEC_FOR_MOCK = provider_spec(MOCK_CLUSTER)


@pytest.fixture(scope="module")
def example_device(mock_stack):
    """The Device the mock serves (asked directly, outside the driver)."""
    r = requests.get(f"{mock_stack.prism.url}/devices/{uuid.uuid4()}", headers={"X-Auth-Token": "any"}, timeout=30)
    assert r.status_code == 200, r.text[:300]
    dev = r.json()
    assert UUID_RX.match(dev["id"]), dev["id"]
    assert dev["tags"] == MOCK_TAGS
    return dev


def _diff(a, b, path="$"):
    if type(a) is not type(b):
        return [path]
    if isinstance(a, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{path}.{k}")
            else:
                out += _diff(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list):
        if len(a) != len(b):
            return [path]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [path]


def test_overlay_only_adds_an_example(mock_stack):
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(SPEC, encoding="utf-8") as f:
        original = yaml.load(f, Loader=loader)
    overlay = json.loads((LOG_DIR / "mock-spec.json").read_text())
    assert _diff(original, overlay) == ["$.components.schemas.Device.properties.tags.example"]


def test_create_returns_provider_id_of_the_example_device(mock_stack, example_device):
    """The mock's device has hostname "string", so the driver's lookup finds no machine
    named `mock-create` and POSTs; the 201 body is the example device."""
    mark = mock_stack.tap.mark()
    r = mock_stack.client.create("mock-create", SPEC_FOR_MOCK)
    assert r.ProviderID == PROVIDER_ID_PREFIX + example_device["id"]
    assert r.NodeName
    posts = [e for e in mock_stack.tap.since(mark) if e.method == "POST" and e.route.endswith("/devices")]
    assert posts and posts[-1].status == 201, [e.describe() for e in mock_stack.tap.since(mark)]


def test_status_by_provider_id_decodes_the_example_device(mock_stack, example_device):
    pid = PROVIDER_ID_PREFIX + example_device["id"]
    r = mock_stack.client.status("mock-create", SPEC_FOR_MOCK, pid)
    assert r.ProviderID == pid
    assert r.NodeName


def test_list_decodes_and_terminates(mock_stack, example_device):
    mark = mock_stack.tap.mark()
    got = dict(mock_stack.client.list(SPEC_FOR_MOCK).MachineList)
    pid = PROVIDER_ID_PREFIX + example_device["id"]
    # The example device carries our cluster tags: it is listed, as hostname "string"
    # (queued is not a state the driver skips).
    assert got == {pid: example_device["hostname"]}, got
    pages = [e for e in mock_stack.tap.since(mark) if e.method == "GET" and e.route.startswith("/projects/")]
    assert 1 <= len(pages) < 50, f"{len(pages)} list requests against a one-page mock"


def test_shutdown_of_queued_device(mock_stack, example_device):
    """The mock's device is always `queued`. Either the driver sends power_off (a request
    Prism validates, 202 from the mock) or it refuses a not-yet-active device with
    FAILED_PRECONDITION naming the state and sends no action (its current policy). The
    happy path on an active device is in test_machine's lifecycle test."""
    assert example_device["state"] == "queued"
    pid = PROVIDER_ID_PREFIX + example_device["id"]
    mark = mock_stack.tap.mark()
    try:
        mock_stack.client.shutdown("mock-create", SPEC_FOR_MOCK, pid)
        refused = None
    except grpc.RpcError as e:
        refused = e
    acts = [e for e in mock_stack.tap.since(mark) if e.route == f"/devices/{example_device['id']}/actions"]
    if refused is None:
        assert acts and acts[-1].status == 202 and acts[-1].request_json == {"type": "power_off"}, [e.describe() for e in acts]
    else:
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION, f"{refused.code()} {refused.details()}"
        assert "queued" in (refused.details() or ""), refused.details()
        assert not acts, [e.describe() for e in acts]


def test_delete_of_locked_device(mock_stack, example_device):
    """The mock's device is `locked: true` (schema-generated booleans are true). Design §6:
    without the spec's consent the driver refuses with FAILED_PRECONDITION and a clear
    message, sending no DELETE; with `unlockOnDelete: true` it unlocks (PUT locked=false,
    validated by Prism) and deletes (204)."""
    assert example_device.get("locked") is True
    pid = PROVIDER_ID_PREFIX + example_device["id"]
    mark = mock_stack.tap.mark()
    err = rpc_error(mock_stack.client.delete, "mock-create", SPEC_FOR_MOCK, pid)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, f"{err.code()} {err.details()}"
    assert "lock" in (err.details() or "").lower()
    assert not [e for e in mock_stack.tap.since(mark) if e.method == "DELETE"], "deleted a locked device"

    mark = mock_stack.tap.mark()
    mock_stack.client.delete("mock-create", dict(SPEC_FOR_MOCK, unlockOnDelete=True), pid)
    seen = mock_stack.tap.since(mark)
    puts = [e for e in seen if e.method == "PUT" and e.route == f"/devices/{example_device['id']}"]
    assert puts and puts[0].request_json == {"locked": False} and puts[0].status == 200, [e.describe() for e in seen]
    deletes = [e for e in seen if e.method == "DELETE" and e.route == f"/devices/{example_device['id']}"]
    assert deletes and deletes[-1].status == 204, [e.describe() for e in seen]
    assert seen.index(puts[0]) < seen.index(deletes[-1]), "must unlock before deleting"
