#!/usr/bin/env bash
# The one-way layering of design §2, checked on the non-test code of src/:
#
#   cmi → provider → metal        the driver's stack; nothing below reaches up
#   provider                      transport-free: no tonic, kube, reqwest, axum or hyper
#   controller                    talks to the driver through the CMI client only
#   sim                           uses only the Metal API's types (metal::types)
#   cli (machine_cli, manifest)   a CMI client too: no provider, metal, sim or controller
#   shared (provider_id,          the wire concepts driver, controller and CLI share: they use
#           secret_data)          no layer and no transport, so every layer may use them
#   testkit                       only the demo, the kit itself and the binaries under src/bin
#                                 (and tests) may use it: it stays out of the production graph
#
# Test code (`#[cfg(test)]` modules, inline or in their own files) may cross layers: a test
# of the Metal client runs against the simulator, for example. Fails listing every offending
# line with the rule it breaks.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 - <<'PY'
import pathlib, re, sys

# layer: (directories or files, forbidden `crate::` paths, forbidden external crates)
RULES = {
    "provider": (["src/provider"], ["cmi", "controller", "sim", "manifest", "machine_cli", "demo"],
                 ["tonic", "kube", "reqwest", "axum", "hyper"]),
    "metal": (["src/metal"], ["provider", "cmi", "controller", "sim", "manifest", "machine_cli", "demo"],
              ["tonic", "kube", "axum"]),
    "controller": (["src/controller"], ["provider", "metal", "sim", "manifest", "machine_cli", "demo",
                   "cmi::server", "cmi::machine", "cmi::identity"], ["reqwest", "axum"]),
    "sim": (["src/sim"], ["provider", "cmi", "controller", "manifest", "machine_cli", "demo",
            "metal::client", "metal::retry", "metal::pagination"], ["tonic"]),
    "cli": (["src/machine_cli.rs", "src/manifest.rs"], ["provider", "metal", "sim", "controller",
            "cmi::server", "cmi::machine", "cmi::identity"], ["kube", "reqwest", "axum"]),
    "shared": (["src/provider_id.rs", "src/secret_data.rs"], ["cmi", "provider", "metal", "sim",
               "controller", "manifest", "machine_cli", "demo"], ["tonic", "kube", "reqwest", "axum", "hyper"]),
}

# Every file of src/ outside the kit's allowed users must not name it.
KIT_USERS = ("testkit", "demo.rs", "bin")
RULES["production"] = ([f"src/{p.name}" for p in sorted(pathlib.Path("src").iterdir())
                        if p.name not in KIT_USERS and (p.is_dir() or p.suffix == ".rs")],
                       ["testkit"], [])

def test_files(root):
    """Files declared as `#[cfg(test)] mod x;` are test code as a whole."""
    out = set()
    for f in root.rglob("*.rs"):
        text = f.read_text()
        for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", text):
            name = m.group(1)
            base = f.parent if f.name in ("mod.rs", "lib.rs", "main.rs") else f.parent / f.stem
            for cand in (base / f"{name}.rs", base / name / "mod.rs"):
                out.add(cand.resolve())
    return out

def block_end(text, i):
    """Index just past the `}` closing the block whose `{` ends at i, skipping strings, chars
    and comments (a `"{"` in a test must not end the block early or late)."""
    depth, n = 1, len(text)
    while i < n and depth:
        c = text[i]
        if text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
            continue
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
            continue
        m = re.match(r'b?r(#*)"', text[i:i + 12])
        if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            end = '"' + m.group(1)
            j = text.find(end, i + m.end())
            i = n if j < 0 else j + len(end)
            continue
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            continue
        m = re.match(r"'(\\.|[^\\'])'", text[i:i + 4])
        if m:
            i += m.end()
            continue
        if c == "{": depth += 1
        elif c == "}": depth -= 1
        i += 1
    return i

def strip_test_blocks(text):
    """Blanks inline `#[cfg(test)] mod x { ... }` blocks, keeping line numbers."""
    out = list(text)
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{", text):
        for j in range(m.start(), block_end(text, m.end())):
            if out[j] != "\n": out[j] = " "
    return "".join(out)

def expand(text, i, prefix):
    """Parses a use-tree starting at text[i] (after `prefix::`); yields full paths."""
    m = re.match(r"\s*([A-Za-z_]\w*)", text[i:])
    if text[i:].lstrip().startswith("{"):
        i = text.index("{", i) + 1
        while True:
            sub_end = i
            depth = 0
            while sub_end < len(text):
                c = text[sub_end]
                if c == "{": depth += 1
                elif c == "}":
                    if depth == 0: break
                    depth -= 1
                elif c == "," and depth == 0: break
                sub_end += 1
            item = text[i:sub_end]
            if item.strip():
                yield from expand(item, 0, prefix)
            if sub_end >= len(text) or text[sub_end] == "}":
                return
            i = sub_end + 1
    elif m:
        path = f"{prefix}::{m.group(1)}" if prefix else m.group(1)
        yield path
        j = i + m.end()
        if text[j:j + 2] == "::":
            yield from expand(text, j + 2, path)

def uses(text):
    """(line, path) for every crate-internal path named, expanding `{a::b, c}` groups."""
    for m in re.finditer(r"\bcrate::", text):
        lineno = text.count("\n", 0, m.start()) + 1
        for path in expand(text, m.end(), ""):
            yield lineno, path

def check(root):
    bad = []
    src = root / "src"
    tests = test_files(src)
    for layer, (paths, forbidden, crates) in RULES.items():
        files = []
        for p in paths:
            p = root / p
            files += sorted(p.rglob("*.rs")) if p.is_dir() else [p]
        for f in files:
            if f.resolve() in tests:
                continue
            text = strip_test_blocks(f.read_text())
            name = f.relative_to(root)
            for lineno, path in uses(text):
                for fb in forbidden:
                    if path == fb or path.startswith(fb + "::"):
                        bad.append(f"{name}:{lineno}: {layer} must not use crate::{fb}")
            for lineno, line in enumerate(text.splitlines(), 1):
                code = line.split("//")[0]
                for c in crates:
                    if re.search(rf"(?<![\w:]){c}::", code):
                        bad.append(f"{name}:{lineno}: {layer} must not use the {c} crate")
    return sorted(set(bad))

# Each rule must be able to fail: one breach per rule (single, grouped and nested imports,
# inline paths), appended to a copy of the tree, must be reported.
BREACHES = [
    ("src/provider/spec.rs", "fn breach() { let _ = tonic::Code::Ok; }", "provider must not use the tonic crate"),
    ("src/provider/machine.rs", "use crate::controller::crd::Machine;", "provider must not use crate::controller"),
    ("src/metal/types.rs", "use crate::{cmi::v1::Breach, secret::Breach2};", "metal must not use crate::cmi"),
    ("src/controller/health.rs", "use crate::provider::spec::Breach;", "controller must not use crate::provider"),
    ("src/controller/status.rs", "use crate::cmi::{client::CmiClient, server::Breach};", "controller must not use crate::cmi::server"),
    ("src/sim/state.rs", "use crate::{\n    metal::{types::A, client::Breach},\n};", "sim must not use crate::metal::client"),
    ("src/machine_cli.rs", "fn breach() { let _ = crate::sim::run; }", "cli must not use crate::sim"),
    ("src/secret_data.rs", "use crate::controller::secrets::load;", "shared must not use crate::controller"),
    ("src/cmi/server.rs", "use crate::testkit::Stack;", "production must not use crate::testkit"),
]

def self_test(root):
    import shutil, tempfile
    with tempfile.TemporaryDirectory() as tmp:
        copy = pathlib.Path(tmp)
        shutil.copytree(root / "src", copy / "src")
        for file, line, rule in BREACHES:
            target = copy / file
            before = target.read_text()
            target.write_text(before + "\n" + line + "\n")
            found = check(copy)
            target.write_text(before)
            if not any(rule in b for b in found):
                print(f"check-layering: self-test: '{line}' in {file} was not reported as '{rule}'", file=sys.stderr)
                sys.exit(2)

root = pathlib.Path(".")
bad = check(root)
if bad:
    print("\n".join(bad), file=sys.stderr)
    print("check-layering: the one-way rules of design §2 are broken (see above)", file=sys.stderr)
    sys.exit(1)
self_test(root)
print(f"check-layering: ok ({len(RULES)} layers; each rule's self-test breach caught)")
PY
