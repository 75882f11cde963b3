"""(c, continued) Rate limits and lost responses.

- `fault_stack`: the simulator refuses 30 % of API requests with 429 + Retry-After
  (without executing them), behind the Prism proxy. Every RPC must still succeed, after
  retries that wait as told.
- `lossy_stack`: the simulator executes 25 % of requests and then drops the connection
  without an answer (the lost-response case that makes naive clients create duplicate
  devices), and fails 10 % with 5xx. No Prism here: a dropped connection is not an answer
  to validate. MCM retries failed calls, so the test retries a call until it is OK, and
  then requires exactly one device per machine.
"""

from __future__ import annotations

import time

import grpc

from cmiclient import device_uuid, provider_spec

CODE = grpc.StatusCode
# Codes a call may fail with transiently under injected faults (MCM retries these).
TRANSIENT = {CODE.UNAVAILABLE, CODE.DEADLINE_EXCEEDED, CODE.ABORTED}


def test_calls_succeed_through_429_storm(fault_stack, cluster):
    c, tap = fault_stack.client, fault_stack.tap
    spec = provider_spec(cluster)
    mark = tap.mark()
    made = {}
    for i in range(3):
        name = f"{cluster}-{i}"
        r = c.create(name, spec)
        made[r.ProviderID] = name
        assert c.status(name, spec, r.ProviderID).ProviderID == r.ProviderID
        assert c.status(name, spec).ProviderID == r.ProviderID
    assert dict(c.list(spec).MachineList) == made
    for pid, name in made.items():
        c.delete(name, spec, pid)
    for pid, name in made.items():
        deadline = time.monotonic() + 20
        while True:
            try:
                c.status(name, spec, pid)
            except grpc.RpcError as e:
                assert e.code() == CODE.NOT_FOUND, f"{e.code()} {e.details()}"
                break
            assert time.monotonic() < deadline
            time.sleep(0.3)

    seen = tap.since(mark)
    limited = [e for e in seen if e.status == 429]
    assert limited, "no 429 was injected: the test proved nothing (is --fault-rate-429 honoured?)"
    assert all("retry-after" in e.response_headers for e in limited), "429 without Retry-After reached the driver"
    devices = fault_stack.api(retries=10).devices(tag=f"kubernetes.io/cluster/{cluster}")
    assert all(d.get("state") == "deprovisioning" for d in devices), [(d["hostname"], d.get("state")) for d in devices]


def test_retry_after_is_honoured(fault_stack, cluster):
    """After a 429 with `Retry-After: N`, the same request is not repeated before N seconds
    (a 10 % allowance for timer granularity)."""
    c, tap = fault_stack.client, fault_stack.tap
    spec = provider_spec(cluster)
    mark = tap.mark()
    for i in range(3):
        r = c.create(f"{cluster}-{i}", spec)
        c.status(f"{cluster}-{i}", spec, r.ProviderID)
        c.list(spec)
    seen = tap.since(mark)
    checked = 0
    too_early = []
    for i, e in enumerate(seen):
        if e.status != 429:
            continue
        wait = float(e.response_headers.get("retry-after", "0"))
        nxt = next((n for n in seen[i + 1:] if n.method == e.method and n.route == e.route), None)
        if nxt is None:
            continue
        checked += 1
        gap = nxt.started - (e.started + e.seconds)
        if gap < 0.9 * wait:
            too_early.append(f"{e.method} {e.path}: retried after {gap:.2f}s, Retry-After {wait:g}s")
    assert checked, "no retried 429 observed"
    assert not too_early, "Retry-After not honoured:\n" + "\n".join(too_early)
    for pid, name in c.list(spec).MachineList.items():
        c.delete(name, spec, pid)


def _until_ok(fn, what: str, attempts: int = 12):
    errors = []
    for _ in range(attempts):
        try:
            return fn()
        except grpc.RpcError as e:
            assert e.code() in TRANSIENT, f"{what}: non-transient {e.code()} {e.details()} (after {errors})"
            errors.append(e.code().name)
            time.sleep(0.2)
    raise AssertionError(f"{what} never succeeded: {errors}")


def test_lost_responses_never_duplicate_devices(lossy_stack, cluster):
    c = lossy_stack.client
    api = lossy_stack.api(retries=20)
    spec = provider_spec(cluster)
    made = {}
    for i in range(6):
        name = f"{cluster}-{i}"
        r = _until_ok(lambda: c.create(name, spec), f"CreateMachine {name}")
        made[name] = r.ProviderID
        again = _until_ok(lambda: c.create(name, spec), f"CreateMachine {name} (retry)")
        assert again.ProviderID == r.ProviderID

    devices = api.devices(tag=f"kubernetes.io/cluster/{cluster}")
    by_host: dict[str, list[str]] = {}
    for d in devices:
        by_host.setdefault(d["hostname"], []).append(d["id"])
    dupes = {h: ids for h, ids in by_host.items() if len(ids) > 1}
    assert not dupes, f"duplicate devices after lost responses: {dupes}"
    assert {h: ids[0] for h, ids in by_host.items()} == {n: device_uuid(p) for n, p in made.items()}

    listed = _until_ok(lambda: c.list(spec), "ListMachines")
    assert dict(listed.MachineList) == {p: n for n, p in made.items()}

    for name, pid in made.items():
        _until_ok(lambda: c.delete(name, spec, pid), f"DeleteMachine {name}")
    deadline = time.monotonic() + 30
    while True:
        listed = _until_ok(lambda: c.list(spec), "ListMachines")
        if not listed.MachineList:
            break
        assert time.monotonic() < deadline, f"still listed after delete: {dict(listed.MachineList)}"
        time.sleep(0.3)
    stats = lossy_stack.sim_stats()
    assert stats, "sim stats empty"


def test_status_errors_are_not_reported_as_not_found(lossy_stack, cluster):
    """Under 5xx/dropped responses GetMachineStatus may fail, but only with a transient
    code: NOT_FOUND would make MCM believe the machine is gone (the Go provider's bug)."""
    c = lossy_stack.client
    spec = provider_spec(cluster)
    name = f"{cluster}-s"
    r = _until_ok(lambda: c.create(name, spec), "CreateMachine")
    for _ in range(15):
        try:
            assert c.status(name, spec, r.ProviderID).ProviderID == r.ProviderID
        except grpc.RpcError as e:
            assert e.code() in TRANSIENT, f"GetMachineStatus of an existing device: {e.code()} {e.details()}"
    _until_ok(lambda: c.delete(name, spec, r.ProviderID), "DeleteMachine")
