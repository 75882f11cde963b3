"""Wire-compatibility check of two versions of the cmi.v1 proto, on compiled descriptors.

`check(reference, candidate)` takes two `FileDescriptorSet`s and returns a list of
problems (empty = compatible). Everything the reference defines in package `cmi.v1` must
exist unchanged in the candidate:
- services and methods (input/output types, client/server streaming);
- messages, nested messages included (map entries too), with every field unchanged by
  number: name, type, label, type_name, oneof membership, proto3 `optional`, packed-ness;
- enums, every value by number with the same name (and no reference name moved to
  another number);
- extensions (`cmi_secret`: extendee, number, type, label), and the `cmi_secret` option on
  every field that carries it in the reference;
- the proto syntax.
Additions are allowed only as new numbers (new fields, enum values) or new names (new
messages, methods, services); reusing a reference number for something else is caught as
a change of that number.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

PACKAGE = "cmi.v1"
CMI_SECRET_NUMBER = 1059
FDP = descriptor_pb2.FieldDescriptorProto


def compile_descriptor_set(proto: Path, include: Path | None = None) -> descriptor_pb2.FileDescriptorSet:
    """Compile `proto` (and its imports) with grpc_tools.protoc into a FileDescriptorSet."""
    from cmiclient import grpc_tools_include

    include = include or proto.parent
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "set.pb"
        rel = proto.resolve().relative_to(include.resolve())
        cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{include}", f"-I{grpc_tools_include()}",
               "--include_imports", f"--descriptor_set_out={out}", str(rel)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"protoc failed for {proto}: {r.stderr.strip()}")
        fds = descriptor_pb2.FileDescriptorSet()
        fds.ParseFromString(out.read_bytes())
        return fds


def _varint_fields(raw: bytes) -> dict[int, list[int]]:
    """Top-level varint fields of a serialized message, by number (unknown extensions too)."""
    out: dict[int, list[int]] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        shift = result = 0
        while True:
            b = raw[i]
            i += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    while i < len(raw):
        key = varint()
        num, wt = key >> 3, key & 7
        if wt == 0:
            out.setdefault(num, []).append(varint())
        elif wt == 1:
            i += 8
        elif wt == 2:
            n = varint()
            i += n
        elif wt == 5:
            i += 4
        else:  # groups: not used in options we read
            break
    return out


def _field_view(f: FDP, oneofs: list[str]) -> dict:
    opts = _varint_fields(f.options.SerializeToString()) if f.HasField("options") else {}
    return {
        "name": f.name,
        "type": FDP.Type.Name(f.type),
        "label": FDP.Label.Name(f.label),
        "type_name": f.type_name,
        "oneof": oneofs[f.oneof_index] if f.HasField("oneof_index") and not f.proto3_optional else None,
        "proto3_optional": f.proto3_optional,
        "packed": bool(opts.get(2, [0])[-1]) if 2 in opts else None,  # FieldOptions.packed = 2
        "cmi_secret": bool(opts.get(CMI_SECRET_NUMBER, [0])[-1]),
    }


def index(fds: descriptor_pb2.FileDescriptorSet, package: str = PACKAGE) -> dict:
    """Symbols of `package` in a descriptor set, keyed by full name."""
    idx = {"services": {}, "messages": {}, "enums": {}, "extensions": {}, "syntax": set()}

    def walk_enum(prefix: str, e):
        idx["enums"][f"{prefix}.{e.name}"] = {v.number: v.name for v in e.value}

    def walk_msg(prefix: str, m):
        full = f"{prefix}.{m.name}"
        oneofs = [o.name for o in m.oneof_decl]
        idx["messages"][full] = {
            "fields": {f.number: _field_view(f, oneofs) for f in m.field},
            "map_entry": m.options.map_entry,
        }
        for n in m.nested_type:
            walk_msg(full, n)
        for e in m.enum_type:
            walk_enum(full, e)
        for x in m.extension:
            idx["extensions"][f"{full}.{x.name}"] = (x.extendee, x.number, FDP.Type.Name(x.type), FDP.Label.Name(x.label))

    for f in fds.file:
        if f.package != package:
            continue
        prefix = f".{package}"
        idx["syntax"].add(f.syntax or "proto2")
        for s in f.service:
            idx["services"][f"{prefix}.{s.name}"] = {
                m.name: {
                    "input": m.input_type,
                    "output": m.output_type,
                    "client_streaming": m.client_streaming,
                    "server_streaming": m.server_streaming,
                }
                for m in s.method
            }
        for m in f.message_type:
            walk_msg(prefix, m)
        for e in f.enum_type:
            walk_enum(prefix, e)
        for x in f.extension:
            idx["extensions"][f"{prefix}.{x.name}"] = (x.extendee, x.number, FDP.Type.Name(x.type), FDP.Label.Name(x.label))
    return idx


def check(reference: descriptor_pb2.FileDescriptorSet, candidate: descriptor_pb2.FileDescriptorSet, package: str = PACKAGE) -> list[str]:
    ref, new = index(reference, package), index(candidate, package)
    problems: list[str] = []
    if not ref["services"] and not ref["messages"]:
        problems.append(f"reference has no symbols in package {package}")
    if ref["syntax"] != new["syntax"]:
        problems.append(f"syntax {sorted(new['syntax'])} != reference {sorted(ref['syntax'])}")

    for svc, methods in ref["services"].items():
        if svc not in new["services"]:
            problems.append(f"service {svc} missing")
            continue
        for name, sig in methods.items():
            got = new["services"][svc].get(name)
            if got is None:
                problems.append(f"method {svc}/{name} missing")
            elif got != sig:
                problems.append(f"method {svc}/{name} changed: {got} != reference {sig}")

    for msg, body in ref["messages"].items():
        got = new["messages"].get(msg)
        if got is None:
            problems.append(f"message {msg} missing")
            continue
        if got["map_entry"] != body["map_entry"]:
            problems.append(f"message {msg}: map_entry {got['map_entry']} != reference {body['map_entry']}")
        for num, fv in body["fields"].items():
            g = got["fields"].get(num)
            if g is None:
                moved = [n for n, x in got["fields"].items() if x["name"] == fv["name"]]
                where = f" (name now on number {moved[0]})" if moved else ""
                problems.append(f"field {msg}.{fv['name']} = {num} missing{where}")
                continue
            for k, v in fv.items():
                if k == "packed" and v is None:
                    continue
                if g[k] != v:
                    problems.append(f"field {msg}.{fv['name']} = {num}: {k} is {g[k]!r}, reference {v!r}")

    for enum, values in ref["enums"].items():
        got = new["enums"].get(enum)
        if got is None:
            problems.append(f"enum {enum} missing")
            continue
        for num, name in values.items():
            if got.get(num) != name:
                problems.append(f"enum {enum}: value {num} is {got.get(num)!r}, reference {name!r}")
        by_name = {v: k for k, v in got.items()}
        for num, name in values.items():
            if name in by_name and by_name[name] != num:
                problems.append(f"enum {enum}: {name} moved from {num} to {by_name[name]}")

    for ext, sig in ref["extensions"].items():
        got = new["extensions"].get(ext)
        if got is None:
            problems.append(f"extension {ext} missing")
        elif got != sig:
            problems.append(f"extension {ext} changed: {got} != reference {sig}")
    return problems
