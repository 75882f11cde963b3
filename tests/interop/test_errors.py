"""(c) Error paths and their gRPC codes (design §6 error table), through the Prism proxy.

Two kinds:
- the Metal API answers with an error (401, 403, 404, 422, no capacity): the driver must
  map it to the right code, not to NOT_FOUND or UNAVAILABLE across the board (the Go
  provider's bug, notes/metal-api.md);
- the input is wrong before any API call (empty name, unknown providerSpec field, missing
  apiToken/userData, malformed ProviderID, ...): INVALID_ARGUMENT whose message names the
  field, and the tap proves that no request reached the API.
"""

from __future__ import annotations

import re
import uuid

import grpc
import pytest

from cmiclient import PROVIDER_ID_PREFIX, provider_spec, rpc_error, secrets, spec_bytes
from conftest import NO_CAPACITY, OTHER_TOKEN

CODE = grpc.StatusCode


def _calls(c, name, spec, sec, provider_id=""):
    """Every Machine RPC that talks to the API, as (label, thunk)."""
    return {
        "CreateMachine": lambda: c.create(name, spec, sec),
        "GetMachineStatus(by id)": lambda: c.status(name, spec, provider_id or PROVIDER_ID_PREFIX + str(uuid.uuid4()), sec),
        "GetMachineStatus(by name)": lambda: c.status(name, spec, "", sec),
        "ListMachines": lambda: c.list(spec, sec),
        "ShutDownMachine": lambda: c.shutdown(name, spec, provider_id or PROVIDER_ID_PREFIX + str(uuid.uuid4()), sec),
        "DeleteMachine": lambda: c.delete(name, spec, provider_id or PROVIDER_ID_PREFIX + str(uuid.uuid4()), sec),
    }


RPCS = ["CreateMachine", "GetMachineStatus(by id)", "GetMachineStatus(by name)", "ListMachines", "ShutDownMachine", "DeleteMachine"]


# --------------------------------------------------------------------------------------
# API errors


@pytest.mark.parametrize("rpc", RPCS)
def test_bad_token_is_unauthenticated(main_stack, cluster, rpc):
    """401 → UNAUTHENTICATED, for every RPC (also for a status by ID: not NOT_FOUND)."""
    c = main_stack.client
    err = rpc_error(_calls(c, f"{cluster}-a", provider_spec(cluster), secrets(token="not-a-valid-token"))[rpc])
    assert err.code() == CODE.UNAUTHENTICATED, f"{rpc}: {err.code()} {err.details()}"
    assert "not-a-valid-token" not in (err.details() or ""), "the token leaked into the status message"


@pytest.mark.parametrize("rpc", ["CreateMachine", "GetMachineStatus(by name)", "ListMachines"])
def test_token_of_another_project_is_permission_denied(main_stack, cluster, rpc):
    """403 on the project (a valid token without access to it) → PERMISSION_DENIED."""
    c = main_stack.client
    err = rpc_error(_calls(c, f"{cluster}-p", provider_spec(cluster), secrets(token=OTHER_TOKEN))[rpc])
    assert err.code() == CODE.PERMISSION_DENIED, f"{rpc}: {err.code()} {err.details()}"


def test_status_of_unknown_device_is_not_found(main_stack, cluster):
    """404 on GET /devices/{id} → NOT_FOUND (MCM then creates the machine)."""
    c = main_stack.client
    pid = PROVIDER_ID_PREFIX + str(uuid.uuid4())
    err = rpc_error(c.status, f"{cluster}-nf", provider_spec(cluster), pid)
    assert err.code() == CODE.NOT_FOUND, f"{err.code()} {err.details()}"
    assert rpc_error(c.status, f"{cluster}-nf", provider_spec(cluster)).code() == CODE.NOT_FOUND
    c.delete(f"{cluster}-nf", provider_spec(cluster), pid)  # missing device: delete is OK


@pytest.mark.parametrize("field,value", [("machineType", "z9.nonexistent.x86"), ("OS", "beos_5"), ("metro", "zz")])
def test_api_validation_error_is_invalid_argument(main_stack, cluster, field, value):
    """422 from the API (bad plan, OS or metro) → INVALID_ARGUMENT, and no device is left behind."""
    c, api = main_stack.client, main_stack.api()
    spec = provider_spec(cluster, **{field: value})
    err = rpc_error(c.create, f"{cluster}-v", spec)
    assert err.code() == CODE.INVALID_ARGUMENT, f"{field}={value}: {err.code()} {err.details()}"
    assert api.devices(tag=f"kubernetes.io/cluster/{cluster}") == []


def test_no_capacity_is_resource_exhausted(main_stack, cluster):
    c, api = main_stack.client, main_stack.api()
    metro, plan = NO_CAPACITY
    spec = provider_spec(cluster, metro=metro, machineType=plan)
    err = rpc_error(c.create, f"{cluster}-cap", spec)
    assert err.code() == CODE.RESOURCE_EXHAUSTED, f"{err.code()} {err.details()}"
    assert api.devices(tag=f"kubernetes.io/cluster/{cluster}") == []


def test_reserved_only_without_a_free_reservation_is_resource_exhausted(main_stack, cluster):
    """reservedDevicesOnly with a reservation that does not exist/is not provisionable: no
    on-demand fallback, RESOURCE_EXHAUSTED."""
    c, api = main_stack.client, main_stack.api()
    spec = provider_spec(cluster, machineType="c3.medium.x86", reservationIDs=[str(uuid.uuid4())], reservedDevicesOnly=True)
    err = rpc_error(c.create, f"{cluster}-ro", spec)
    assert err.code() == CODE.RESOURCE_EXHAUSTED, f"{err.code()} {err.details()}"
    assert api.devices(tag=f"kubernetes.io/cluster/{cluster}") == []


# --------------------------------------------------------------------------------------
# bad input: INVALID_ARGUMENT naming the field, and nothing sent to the API


def _assert_invalid(stack, thunk, field_rx: str):
    mark = stack.tap.mark()
    err = rpc_error(thunk)
    assert err.code() == CODE.INVALID_ARGUMENT, f"{err.code()} {err.details()}"
    assert re.search(field_rx, err.details() or ""), f"message {err.details()!r} should name the field (/{field_rx}/)"
    sent = stack.tap.since(mark)
    assert not sent, "bad input reached the Metal API:\n" + "\n".join(e.describe() for e in sent)
    return err


NAME_RX = r"(?i)machine.?name|\bname\b"
PID_RX = r"(?i)provider.?id"


@pytest.mark.parametrize("rpc", ["CreateMachine", "GetMachineStatus", "ShutDownMachine", "DeleteMachine"])
def test_empty_machine_name(main_stack, cluster, rpc):
    c, spec = main_stack.client, provider_spec(cluster)
    thunk = {
        "CreateMachine": lambda: c.create("", spec),
        "GetMachineStatus": lambda: c.status("", spec),
        "ShutDownMachine": lambda: c.shutdown("", spec),
        "DeleteMachine": lambda: c.delete("", spec),
    }[rpc]
    _assert_invalid(main_stack, thunk, NAME_RX)


def test_unknown_provider_spec_field_refuses_create(main_stack, cluster):
    """A typo in the MachineClass must not be silently ignored by create (design §4)."""
    c = main_stack.client
    spec = provider_spec(cluster, machineTyp="c3.small.x86")
    _assert_invalid(main_stack, lambda: c.create(f"{cluster}-u", spec), r"machineTyp\b")


def test_unknown_provider_spec_field_never_traps_a_machine(main_stack, cluster):
    """Only CreateMachine is strict: status, list, shutdown and delete ignore an unknown field
    (a class that stopped validating must not keep its Machines from being deleted)."""
    c = main_stack.client
    spec = provider_spec(cluster, machineTyp="c3.small.x86")
    name = f"{cluster}-u"
    assert rpc_error(c.status, name, spec).code() == CODE.NOT_FOUND
    assert dict(c.list(spec).MachineList) == {}
    c.shutdown(name, spec)
    c.delete(name, spec)


@pytest.mark.parametrize("rpc", ["CreateMachine", "ListMachines", "GetMachineStatus", "DeleteMachine"])
def test_missing_api_token(main_stack, cluster, rpc):
    c, spec, sec = main_stack.client, provider_spec(cluster), secrets(token=None)
    thunk = {"CreateMachine": lambda: c.create(f"{cluster}-t", spec, sec),
             "ListMachines": lambda: c.list(spec, sec),
             "GetMachineStatus": lambda: c.status(f"{cluster}-t", spec, "", sec),
             "DeleteMachine": lambda: c.delete(f"{cluster}-t", spec, PROVIDER_ID_PREFIX + str(uuid.uuid4()), sec)}[rpc]
    _assert_invalid(main_stack, thunk, r"apiToken")


def test_missing_user_data_on_create(main_stack, cluster):
    c = main_stack.client
    _assert_invalid(main_stack, lambda: c.create(f"{cluster}-ud", provider_spec(cluster), secrets(user_data=None)), r"userData")


@pytest.mark.parametrize("provider_id", ["aws:///eu-west-1/i-0123456789", "equinixmetal://not-a-uuid", "equinixmetal://",
                                         "equinixmetal://sv/also-not-a-uuid", "packet://"])
@pytest.mark.parametrize("rpc", ["GetMachineStatus", "ShutDownMachine", "DeleteMachine"])
def test_malformed_provider_id(main_stack, cluster, rpc, provider_id):
    c, spec = main_stack.client, provider_spec(cluster)
    thunk = {"GetMachineStatus": lambda: c.status(f"{cluster}-pid", spec, provider_id),
             "ShutDownMachine": lambda: c.shutdown(f"{cluster}-pid", spec, provider_id),
             "DeleteMachine": lambda: c.delete(f"{cluster}-pid", spec, provider_id)}[rpc]
    _assert_invalid(main_stack, thunk, PID_RX)


@pytest.mark.parametrize("case,spec_override,field_rx", [
    ("not-json", b"{not json", r"(?i)provider.?spec"),
    ("no-project", {"projectID": None}, r"projectID"),
    ("bad-project", {"projectID": "not-a-uuid"}, r"projectID"),
    ("no-machine-type", {"machineType": None}, r"machineType"),
    ("no-location", {"metro": None}, r"metro|facilities"),
    ("no-os", {"OS": None}, r"\bOS\b|ipxeScriptUrl"),
    ("bad-billing-cycle", {"billingCycle": "weekly"}, r"billingCycle"),
    ("no-cluster-tag", {"tags": ["kubernetes.io/role/node"]}, r"(?i)tags|kubernetes\.io/cluster"),
    ("no-role-tag", {"tags": ["kubernetes.io/cluster/x"]}, r"(?i)tags|kubernetes\.io/role"),
    ("tags-not-a-list", {"tags": "kubernetes.io/cluster/x"}, r"tags"),
])
def test_invalid_provider_spec_on_create(main_stack, cluster, case, spec_override, field_rx):
    c = main_stack.client
    if isinstance(spec_override, bytes):
        spec = spec_override
    else:
        spec = provider_spec(cluster, **spec_override)
    _assert_invalid(main_stack, lambda: c.create(f"{cluster}-ps", spec_bytes(spec)), field_rx)
