"""An independent CMI client: Python stubs generated at test time from the *reference*
cmi.proto (shared/reference/cmi/cmi.proto), never from our proto/, plus request builders.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import grpc

PROJECT = "5d1ef2a4-0000-4000-8000-000000000001"
TOKEN = "sim-token"
USER_DATA = b"#cloud-config\nruncmd: [echo conformance]\n"
PROVIDER_ID_PREFIX = "equinixmetal://"
RPC_TIMEOUT = 60.0


def grpc_tools_include() -> str:
    import grpc_tools

    return str(Path(grpc_tools.__file__).parent / "_proto")


def protoc(args: list[str]) -> None:
    from grpc_tools import protoc as _protoc

    rc = _protoc.main(["grpc_tools.protoc", f"-I{grpc_tools_include()}", *args])
    if rc != 0:
        raise RuntimeError(f"protoc failed ({rc}): {args}")


def generate_stubs(reference_proto: Path, out_dir: Path):
    """Generate and import `cmi_pb2`, `cmi_pb2_grpc` from the reference proto into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    protoc([f"-I{reference_proto.parent}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", reference_proto.name])
    stem = reference_proto.stem
    sys.path.insert(0, str(out_dir))
    try:
        pb2 = importlib.import_module(f"{stem}_pb2")
        pb2_grpc = importlib.import_module(f"{stem}_pb2_grpc")
    finally:
        sys.path.remove(str(out_dir))
    # The generated file must describe the reference package, or we generated the wrong thing.
    assert pb2.DESCRIPTOR.package == "cmi.v1", pb2.DESCRIPTOR.package
    return pb2, pb2_grpc


def provider_spec(cluster: str, **overrides) -> dict:
    """A MachineClass providerSpec as Gardener emits it (field names of design §4)."""
    spec = {
        "projectID": PROJECT,
        "metro": "sv",
        "machineType": "c3.small.x86",
        "OS": "ubuntu_22_04",
        "billingCycle": "hourly",
        "tags": [f"kubernetes.io/cluster/{cluster}", "kubernetes.io/role/node"],
    }
    for k, v in overrides.items():
        if v is None:
            spec.pop(k, None)
        else:
            spec[k] = v
    return spec


def secrets(token: str | None = TOKEN, user_data: bytes | None = USER_DATA, **extra: str) -> dict[str, bytes]:
    s: dict[str, bytes] = {}
    if token is not None:
        s["apiToken"] = token.encode()
    if user_data is not None:
        s["userData"] = user_data
    for k, v in extra.items():
        s[k] = v.encode() if isinstance(v, str) else v
    return s


def spec_bytes(spec) -> bytes:
    if isinstance(spec, (bytes, bytearray)):
        return bytes(spec)
    return json.dumps(spec).encode()


def device_uuid(provider_id: str) -> str:
    assert provider_id.startswith(PROVIDER_ID_PREFIX), provider_id
    return provider_id[len(PROVIDER_ID_PREFIX):]


class Driver:
    """Typed calls of both services over one insecure loopback channel."""

    def __init__(self, target: str, pb2, pb2_grpc):
        self.pb2 = pb2
        self.channel = grpc.insecure_channel(target)
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.identity = pb2_grpc.IdentityStub(self.channel)
        self.machine = pb2_grpc.MachineStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    # Identity
    def plugin_info(self):
        return self.identity.GetPluginInfo(self.pb2.GetPluginInfoRequest(), timeout=RPC_TIMEOUT)

    def capabilities(self):
        return self.identity.GetPluginCapabilities(self.pb2.GetPluginCapabilitiesRequest(), timeout=RPC_TIMEOUT)

    def probe(self):
        return self.identity.Probe(self.pb2.ProbeRequest(), timeout=RPC_TIMEOUT)

    # Machine
    def create(self, name: str, spec, sec=None):
        req = self.pb2.CreateMachineRequest(MachineName=name, ProviderSpec=spec_bytes(spec), Secrets=secrets() if sec is None else sec)
        return self.machine.CreateMachine(req, timeout=RPC_TIMEOUT)

    def status(self, name: str, spec, provider_id: str = "", sec=None):
        req = self.pb2.GetMachineStatusRequest(MachineName=name, ProviderSpec=spec_bytes(spec), Secrets=secrets() if sec is None else sec, ProviderID=provider_id)
        return self.machine.GetMachineStatus(req, timeout=RPC_TIMEOUT)

    def list(self, spec, sec=None):
        req = self.pb2.ListMachinesRequest(ProviderSpec=spec_bytes(spec), Secrets=secrets() if sec is None else sec)
        return self.machine.ListMachines(req, timeout=RPC_TIMEOUT)

    def shutdown(self, name: str, spec, provider_id: str = "", sec=None):
        req = self.pb2.ShutDownMachineRequest(MachineName=name, ProviderSpec=spec_bytes(spec), Secrets=secrets() if sec is None else sec, ProviderID=provider_id)
        return self.machine.ShutDownMachine(req, timeout=RPC_TIMEOUT)

    def delete(self, name: str, spec, provider_id: str = "", sec=None):
        req = self.pb2.DeleteMachineRequest(MachineName=name, ProviderSpec=spec_bytes(spec), Secrets=secrets() if sec is None else sec, ProviderID=provider_id)
        return self.machine.DeleteMachine(req, timeout=RPC_TIMEOUT)

    def volume_ids(self, pv_specs: bytes):
        return self.machine.GetVolumeIDs(self.pb2.GetVolumeIDsRequest(PVSpecList=pv_specs), timeout=RPC_TIMEOUT)


def rpc_error(fn, *args, **kwargs) -> grpc.RpcError:
    """Call `fn` expecting a gRPC error; return it (fail if the call succeeded)."""
    try:
        resp = fn(*args, **kwargs)
    except grpc.RpcError as e:
        return e
    raise AssertionError(f"expected a gRPC error, got OK: {resp!r}")
