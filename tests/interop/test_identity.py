"""(a) Identity service, standard gRPC health, server reflection and the side HTTP port,
seen by clients that share no code with the driver (stubs from the reference proto,
grpcio-health-checking, a hand-made reflection v1 client, grpc-health-probe from Go).
"""

from __future__ import annotations

import re
import subprocess

import grpc
import pytest
import requests
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from conftest import HEALTH_PROBE, REF_PROTO
from protocompat import check, compile_descriptor_set

DNS_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,61}[A-Za-z0-9])?$")


def test_plugin_info_has_dns_style_name_and_version(main_stack):
    info = main_stack.client.plugin_info()
    assert DNS_NAME.match(info.name), f"GetPluginInfo.name {info.name!r} is not domain-name notation (RFC 1035, ≤63 chars)"
    assert "." in info.name, f"name {info.name!r} should be DNS-style with a dot, e.g. metal.driver.cmi"
    assert info.version.strip(), "GetPluginInfo.version is REQUIRED"


def test_capabilities_advertise_all_six_rpcs(main_stack, cmi):
    pb2, _ = cmi
    caps = main_stack.client.capabilities().capabilities
    kinds = [c.WhichOneof("type") for c in caps]
    assert all(k == "rpc" for k in kinds), f"every capability should be an RPC capability: {kinds}"
    types = sorted(c.rpc.type for c in caps)
    T = pb2.PluginCapability.RPC.Type
    expected = sorted([T.Value(n) for n in ("CREATE_MACHINE", "DELETE_MACHINE", "GET_MACHINE_STATUS",
                                            "LIST_MACHINES", "SHUTDOWN_MACHINE", "GET_VOLUME_IDS")])
    assert expected == [1, 2, 3, 4, 5, 6]
    assert types == expected, f"capabilities {[T.Name(t) if t in T.values() else t for t in types]}"


def test_probe_reports_ready(main_stack):
    resp = main_stack.client.probe()
    assert resp.HasField("ready"), "Probe should say ready=true explicitly once serving"
    assert resp.ready.value is True


@pytest.mark.parametrize("service", ["", "cmi.v1.Identity", "cmi.v1.Machine"])
def test_standard_health_check_serving(main_stack, service):
    stub = health_pb2_grpc.HealthStub(main_stack.client.channel)
    resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def test_health_unknown_service_is_not_found(main_stack):
    stub = health_pb2_grpc.HealthStub(main_stack.client.channel)
    with pytest.raises(grpc.RpcError) as e:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_grpc_health_probe_binary(main_stack):
    if not HEALTH_PROBE:
        pytest.skip("grpc-health-probe not built (hack/tools.sh builds it when Go is available)")
    r = subprocess.run([HEALTH_PROBE, f"-addr={main_stack.target}", "-connect-timeout=5s", "-rpc-timeout=5s"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"grpc-health-probe exit {r.returncode}: {r.stdout}{r.stderr}"
    assert "SERVING" in (r.stdout + r.stderr)


def _reflect(channel, requests_, version="v1"):
    """Server reflection over the given protocol version. v1 and v1alpha messages are
    wire-identical; only the service path differs, so the v1alpha classes shipped with
    grpcio-reflection serve as a v1 client."""
    call = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return list(call(iter(requests_), timeout=10))


def test_reflection_v1_lists_services(main_stack):
    (resp,) = _reflect(main_stack.client.channel, [reflection_pb2.ServerReflectionRequest(list_services="")])
    assert resp.WhichOneof("message_response") == "list_services_response", resp
    names = {s.name for s in resp.list_services_response.service}
    assert {"cmi.v1.Machine", "cmi.v1.Identity", "grpc.health.v1.Health"} <= names, names


def test_reflection_serves_a_descriptor_wire_compatible_with_reference(main_stack):
    """The schema the running server describes (not just our proto file) matches the reference,
    custom options included: a client built from reflection (grpcurl, dynamic clients) must
    still see which fields are `(cmi_secret)`.

    Regression guard: build.rs must write the descriptor set losslessly
    (`compiler.encode_file_descriptor_set()`); a prost-types round trip
    (`file_descriptor_set().encode_to_vec()`) drops extension options, and reflection then
    serves `options {}` on every `Secrets` field (seen and fixed on 2026-11-23).
    tonic-reflection 0.14.9 serves the registered bytes verbatim."""
    served = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()
    pending = ["cmi.v1.Machine", "cmi.v1.Identity"]
    while pending:
        sym = pending.pop()
        (resp,) = _reflect(main_stack.client.channel, [reflection_pb2.ServerReflectionRequest(file_containing_symbol=sym)])
        assert resp.WhichOneof("message_response") == "file_descriptor_response", f"{sym}: {resp}"
        for raw in resp.file_descriptor_response.file_descriptor_proto:
            fdp = descriptor_pb2.FileDescriptorProto.FromString(raw)
            if fdp.name not in seen:
                seen.add(fdp.name)
                served.file.append(fdp)
    problems = check(compile_descriptor_set(REF_PROTO), served)
    assert not problems, "schema served by reflection differs from the reference:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_side_http_port(main_stack, path):
    r = requests.get(main_stack.http_url + path, timeout=10)
    assert r.status_code == 200, f"{path}: {r.status_code} {r.text[:200]}"
    if path == "/metrics":
        assert "# TYPE" in r.text or "# HELP" in r.text, r.text[:300]
