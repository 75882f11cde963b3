"""(3) Our proto/cmi/v1/cmi.proto is wire-compatible with the reference cmi.proto.

Both are compiled with grpc_tools.protoc to descriptor sets and compared symbol by
symbol (see protocompat.py for the rules). The negative tests mutate a copy of the
reference and prove the checker catches each kind of break; the positive ones prove
that additions under new numbers are accepted.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import OUR_PROTO, REF_PROTO
from protocompat import check, compile_descriptor_set, index


@pytest.fixture(scope="module")
def ref_fds():
    return compile_descriptor_set(REF_PROTO)


def test_reference_has_the_expected_shape(ref_fds):
    """Sanity: the checker sees what the reference defines (so an empty index can't pass)."""
    idx = index(ref_fds)
    assert set(idx["services"]) == {".cmi.v1.Identity", ".cmi.v1.Machine"}
    assert set(idx["services"][".cmi.v1.Machine"]) == {
        "CreateMachine", "DeleteMachine", "GetMachineStatus", "ListMachines", "ShutDownMachine", "GetVolumeIDs"}
    assert idx["enums"][".cmi.v1.PluginCapability.RPC.Type"] == {
        0: "UNKNOWN", 1: "CREATE_MACHINE", 2: "DELETE_MACHINE", 3: "GET_MACHINE_STATUS",
        4: "LIST_MACHINES", 5: "SHUTDOWN_MACHINE", 6: "GET_VOLUME_IDS"}
    assert idx["extensions"][".cmi.v1.cmi_secret"] == (".google.protobuf.FieldOptions", 1059, "TYPE_BOOL", "LABEL_OPTIONAL")
    secret_fields = sorted(m for m, b in idx["messages"].items() for f in b["fields"].values() if f["cmi_secret"])
    assert secret_fields == sorted(f".cmi.v1.{m}" for m in (
        "CreateMachineRequest", "DeleteMachineRequest", "GetMachineStatusRequest", "ListMachinesRequest", "ShutDownMachineRequest"))


def test_our_proto_is_wire_compatible_with_reference(ref_fds):
    assert OUR_PROTO.is_file(), OUR_PROTO
    ours = compile_descriptor_set(OUR_PROTO, include=OUR_PROTO.parents[2])
    problems = check(ref_fds, ours)
    assert not problems, "proto/cmi/v1/cmi.proto breaks wire compatibility:\n" + "\n".join(problems)


def test_reference_is_compatible_with_itself(ref_fds):
    assert check(ref_fds, ref_fds) == []


# Each mutation: (id, regex on the reference text, replacement, expected problem regex).
BREAKS = [
    ("renumber-field", r"string MachineName = 1;", "string MachineName = 7;",
     r"CreateMachineRequest\.MachineName = 1 missing \(name now on number 7\)"),
    ("retype-field", r"bytes ProviderSpec = 2;", "string ProviderSpec = 2;",
     r"CreateMachineRequest\.ProviderSpec = 2: type is 'TYPE_STRING', reference 'TYPE_BYTES'"),
    ("rename-field", r"string ProviderID = 1;", "string ProviderId = 1;",
     r"CreateMachineResponse\.ProviderID = 1: name is 'ProviderId'"),
    ("repeated-label", r"repeated string VolumeIDs = 1;", "string VolumeIDs = 1;",
     r"GetVolumeIDsResponse\.VolumeIDs = 1: label is 'LABEL_OPTIONAL', reference 'LABEL_REPEATED'"),
    ("enum-swap", r"LIST_MACHINES = 4;(.*?)SHUTDOWN_MACHINE = 5;", r"LIST_MACHINES = 5;\1SHUTDOWN_MACHINE = 4;",
     r"PluginCapability\.RPC\.Type: value 4 is 'SHUTDOWN_MACHINE', reference 'LIST_MACHINES'"),
    ("drop-cmi-secret", r"map<string, bytes> Secrets = 2 \[\(cmi_secret\) = true\];", "map<string, bytes> Secrets = 2;",
     r"ListMachinesRequest\.Secrets = 2: cmi_secret is False, reference True"),
    ("extension-number", r"bool cmi_secret = 1059;", "bool cmi_secret = 1060;",
     r"extension \.cmi\.v1\.cmi_secret changed"),
    ("server-streaming", r"returns \(ListMachinesResponse\)", "returns (stream ListMachinesResponse)",
     r"method \.cmi\.v1\.Machine/ListMachines changed"),
    ("method-input", r"rpc ShutDownMachine \(ShutDownMachineRequest\)", "rpc ShutDownMachine (DeleteMachineRequest)",
     r"method \.cmi\.v1\.Machine/ShutDownMachine changed"),
    ("rename-method", r"rpc GetVolumeIDs\(", "rpc GetVolumeIds(",
     r"method \.cmi\.v1\.Machine/GetVolumeIDs missing"),
    ("rename-message", r"\bProbeResponse\b", "ProbeReply",  # every occurrence (see ALL)
     r"message \.cmi\.v1\.ProbeResponse missing"),
    ("wrapper-type", r"\.google\.protobuf\.BoolValue ready = 1;", "bool ready = 1;",
     r"ProbeResponse\.ready = 1: type is 'TYPE_BOOL', reference 'TYPE_MESSAGE'"),
    ("map-value-type", r"map<string, string> MachineList = 1;", "map<string, bytes> MachineList = 1;",
     r"MachineListEntry\.value = 2: type is 'TYPE_BYTES', reference 'TYPE_STRING'"),
    ("leave-oneof", r"oneof type \{\s*// RPC that the plugin supports.\s*RPC rpc = 1;\s*\}", "RPC rpc = 1;",
     r"PluginCapability\.rpc = 1: oneof is None, reference 'type'"),
    ("package", r"package cmi\.v1;", "package cmi.v2;", r"service \.cmi\.v1\.Identity missing"),
]

ADDITIONS = [
    ("new-field", r"(message GetMachineStatusResponse \{)", r"\1\n    repeated string Addresses = 3;"),
    ("new-enum-value", r"GET_VOLUME_IDS = 6;", "GET_VOLUME_IDS = 6;\n            INITIALIZE_MACHINE = 7;"),
    ("new-method", r"(service Machine \{)", r"\1\n    rpc InitializeMachine (GetMachineStatusRequest) returns (GetMachineStatusResponse) {}"),
    ("new-message", r"$", "\nmessage NodeAddress { string address = 1; string type = 2; }\n"),
]


# Mutations applied to every occurrence instead of the first.
ALL = {"rename-message"}


def _mutate(tmp_path: Path, pattern: str, repl: str, every: bool = False) -> Path:
    text = REF_PROTO.read_text()
    new, n = re.subn(pattern, repl, text, count=0 if every else 1, flags=re.S)
    assert n >= 1, f"mutation pattern {pattern!r} not found in the reference"
    out = tmp_path / "cmi.proto"
    out.write_text(new)
    return out


@pytest.mark.parametrize("name,pattern,repl,expected", BREAKS, ids=[b[0] for b in BREAKS])
def test_checker_catches_breaking_change(ref_fds, tmp_path, name, pattern, repl, expected):
    mutated = compile_descriptor_set(_mutate(tmp_path, pattern, repl, every=name in ALL))
    problems = check(ref_fds, mutated)
    assert problems, f"checker missed the '{name}' break"
    assert any(re.search(expected, p) for p in problems), f"'{name}': expected /{expected}/ among:\n" + "\n".join(problems)


@pytest.mark.parametrize("name,pattern,repl", ADDITIONS, ids=[a[0] for a in ADDITIONS])
def test_checker_accepts_additions_under_new_numbers(ref_fds, tmp_path, name, pattern, repl):
    mutated = compile_descriptor_set(_mutate(tmp_path, pattern, repl))
    assert check(ref_fds, mutated) == []


def test_checker_rejects_addition_reusing_a_number(ref_fds, tmp_path):
    """An 'addition' that takes an existing number is a change of that number."""
    mutated = compile_descriptor_set(_mutate(
        tmp_path, r"string NodeName = 2;\n\}\n\nmessage ListMachinesRequest",
        "string NodeName = 3;\n    string Addresses = 2;\n}\n\nmessage ListMachinesRequest"))
    problems = check(ref_fds, mutated)
    assert any("GetMachineStatusResponse.NodeName = 2" in p for p in problems), problems
