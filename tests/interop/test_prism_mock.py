"""(e) The driver against `prism mock`: no simulator, only the spec's static examples.

Prism's static mock answers every device call with the same example Device, generated
from the spec's schema (the spec has no explicit device example, so Prism fills
`format: uuid` with its fixed sample id, `state` with the first enum value `queued`,
strings with "string"). The point is that our client decodes what the spec allows and
sends only what the spec accepts (Prism runs with --errors; the conftest guard scans its
log), independent of our own simulator.

Known limits of the mock, which the assertions respect:
- the example device has hostname "string" and tags ["string"], so it never carries our
  cluster tag: ListMachines may legitimately filter it out (design §5);
- the example `meta` has `next: {href: "string"}` and `current_page = last_page = 0`, so a
  client that follows `meta.next` blindly would loop; the Go SDK's stop rule
  (`current_page >= last_page`) ends after one page.
"""

from __future__ import annotations

import re
import uuid

import pytest
import requests

from cmiclient import PROVIDER_ID_PREFIX, provider_spec

UUID_RX = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def example_device(mock_stack):
    """The spec's example Device as the mock serves it (asked directly, outside the driver)."""
    r = requests.get(f"{mock_stack.prism.url}/devices/{uuid.uuid4()}", headers={"X-Auth-Token": "any"}, timeout=30)
    assert r.status_code == 200, r.text[:300]
    dev = r.json()
    assert UUID_RX.match(dev["id"]), dev["id"]
    return dev


def test_create_returns_provider_id_of_the_example_device(mock_stack, example_device, cluster):
    r = mock_stack.client.create(f"{cluster}-m", provider_spec(cluster))
    assert r.ProviderID == PROVIDER_ID_PREFIX + example_device["id"]
    assert r.NodeName


def test_status_by_provider_id_decodes_the_example_device(mock_stack, example_device, cluster):
    pid = PROVIDER_ID_PREFIX + example_device["id"]
    r = mock_stack.client.status(f"{cluster}-m", provider_spec(cluster), pid)
    assert r.ProviderID == pid
    assert r.NodeName


def test_list_decodes_and_terminates(mock_stack, example_device, cluster):
    r = mock_stack.client.list(provider_spec(cluster))
    got = dict(r.MachineList)
    assert set(got) <= {PROVIDER_ID_PREFIX + example_device["id"]}, got
    pages = [e for e in mock_stack.tap.exchanges if e.method == "GET" and e.route.endswith("/devices") and e.route.startswith("/projects/")]
    assert pages and len(pages) < 50, f"{len(pages)} list requests against a one-page mock"


def test_delete_succeeds(mock_stack, example_device, cluster):
    pid = PROVIDER_ID_PREFIX + example_device["id"]
    mock_stack.client.delete(f"{cluster}-m", provider_spec(cluster), pid)
    deletes = [e for e in mock_stack.tap.exchanges if e.method == "DELETE" and e.route == f"/devices/{example_device['id']}"]
    assert deletes and deletes[-1].status == 204, [e.describe() for e in deletes]


def test_shutdown_succeeds(mock_stack, example_device, cluster):
    pid = PROVIDER_ID_PREFIX + example_device["id"]
    mock_stack.client.shutdown(f"{cluster}-m", provider_spec(cluster), pid)
    acts = [e for e in mock_stack.tap.exchanges if e.method == "POST" and e.route == f"/devices/{example_device['id']}/actions"]
    assert acts and acts[-1].status == 202, [e.describe() for e in acts]
