"""Fixtures of the conformance suite.

A *stack* is: `metal-driver sim` → Prism validating proxy → recording tap → `metal-driver serve`
(or `serve` → tap → `prism mock`), each on a free loopback port, plus an independent gRPC
client generated from the reference cmi.proto. Every test that uses a proxied stack is
guarded: after it, Prism's log is scanned and any request/response violation fails it.

Environment (all optional; hack/conformance.sh sets them):
  METAL_DRIVER_BIN       the binary (default: <repo>/target/debug/metal-driver)
  METAL_DRIVER_SHARED    the shared/ directory (default: <repo>/../shared)
  METAL_DRIVER_PRISM     prism executable (default: <cache>/prism/node_modules/.bin/prism)
  METAL_DRIVER_GRPC_HEALTH_PROBE  grpc-health-probe executable (its test skips without it)
  METAL_DRIVER_CACHE     tool cache (default: ~/.cache/metal-driver)
  METAL_DRIVER_INTEROP_LOGS  where process logs go (default: <repo>/target/interop-logs)
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cmiclient import Driver, generate_stubs
from metalapi import MetalApi
from prism import Deviation, Prism
from procs import Proc, free_port
from tap import Tap

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("METAL_DRIVER_SHARED") or (REPO.parent / "shared")).resolve()
REF_PROTO = SHARED / "reference" / "cmi" / "cmi.proto"
OUR_PROTO = REPO / "proto" / "cmi" / "v1" / "cmi.proto"
SPEC = SHARED / "reference" / "metal-api" / "metal-openapi.bundled.yaml"
CACHE = Path(os.environ.get("METAL_DRIVER_CACHE") or (Path.home() / ".cache" / "metal-driver"))
BIN = Path(os.environ.get("METAL_DRIVER_BIN") or (REPO / "target" / "debug" / "metal-driver"))
PRISM_BIN = os.environ.get("METAL_DRIVER_PRISM") or str(CACHE / "prism" / "node_modules" / ".bin" / "prism")
HEALTH_PROBE = os.environ.get("METAL_DRIVER_GRPC_HEALTH_PROBE") or ""
LOG_DIR = Path(os.environ.get("METAL_DRIVER_INTEROP_LOGS") or (REPO / "target" / "interop-logs"))

# Fixed identities used by the stacks (the sim's default project is PROJECT).
PROJECT = "5d1ef2a4-0000-4000-8000-000000000001"
OTHER_PROJECT = "5d1ef2a4-0000-4000-8000-000000000002"
OTHER_TOKEN = "other-project-token"  # valid, but only for OTHER_PROJECT
RESERVATION_SV = "a7e1c0de-0000-4000-8000-00000000e001"  # sv:c3.medium.x86
RESERVATION_DA = "a7e1c0de-0000-4000-8000-00000000e002"  # da:c3.small.x86
NO_CAPACITY = ("sv", "m3.large.x86")  # capacity 0
PER_PAGE_MAX = 5


def pytest_configure(config):
    config.addinivalue_line("markers", "prism_allow(name, pattern, reason): accept one more Prism violation (a spec defect) in this test")
    if LOG_DIR.exists():
        shutil.rmtree(LOG_DIR, ignore_errors=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)


def pytest_report_header(config):
    return [f"metal-driver: {BIN}", f"shared: {SHARED}", f"prism: {PRISM_BIN}", f"logs: {LOG_DIR}"]


# --------------------------------------------------------------------------------------
# tools and stubs


@pytest.fixture(scope="session")
def cmi(tmp_path_factory):
    """(pb2, pb2_grpc) generated now from the reference proto."""
    if not REF_PROTO.is_file():
        pytest.fail(f"reference proto not found at {REF_PROTO} (set METAL_DRIVER_SHARED)")
    return generate_stubs(REF_PROTO, tmp_path_factory.mktemp("cmi-stubs"))


@pytest.fixture(scope="session")
def binary():
    if not BIN.is_file():
        pytest.fail(f"{BIN} not built: run `cargo build --bin metal-driver` (hack/conformance.sh does)")
    return BIN


@pytest.fixture(scope="session")
def prism_bin():
    if not Path(PRISM_BIN).exists():
        pytest.fail(f"Prism not installed at {PRISM_BIN}: run hack/tools.sh")
    return PRISM_BIN


# --------------------------------------------------------------------------------------
# stacks


@dataclass
class Stack:
    name: str
    sim: Proc | None
    sim_url: str | None
    prism: Prism | None
    tap: Tap | None
    driver: Proc
    target: str  # host:port of the gRPC server
    http_url: str  # side port (/healthz /readyz /metrics)
    api_url: str  # what the driver talks to
    client: Driver
    extra_procs: list = field(default_factory=list)

    def api(self, token: str | None = None, project: str = PROJECT, retries: int = 0) -> MetalApi:
        """A Metal API client on the same path the driver uses (tap → Prism → sim)."""
        return MetalApi(self.api_url, **({"token": token} if token else {}), project=project, retries=retries)

    def sim_stats(self) -> dict:
        import requests

        return requests.get(f"{self.sim_url}/_sim/stats", timeout=10).json()

    def stop(self) -> None:
        try:
            self.client.close()
        except Exception:
            pass
        for p in [self.driver, *self.extra_procs]:
            p.stop()
        if self.prism:
            self.prism.stop()
        if self.tap:
            self.tap.close()
        if self.sim:
            self.sim.stop()


def start_sim(binary: Path, name: str, args: list[str]) -> tuple[Proc, str]:
    sim = Proc(f"{name}-sim", [binary, "sim", "--listen", "127.0.0.1:0", *args], LOG_DIR / f"{name}-sim.log",
               env={"RUST_LOG": os.environ.get("RUST_LOG", "info")})
    url = sim.start(r"listening on (http://\S+)", timeout=30).rstrip("/")
    return sim, url


# The driver logs at debug level, so the secret-leak check (test_zz_logs.py) covers the
# verbose paths too (design §4: a `?request` in a span prints the Secrets map).
DRIVER_LOG = os.environ.get("RUST_LOG", "metal_driver=debug,info")


def start_driver(binary: Path, name: str, api_url: str) -> tuple[Proc, str, str]:
    http_port = free_port()
    driver = Proc(
        f"{name}-serve",
        [binary, "serve", "--endpoint", "tcp://127.0.0.1:0", "--metal-api-url", api_url, "--http-addr", f"127.0.0.1:{http_port}"],
        LOG_DIR / f"{name}-serve.log",
        env={"RUST_LOG": DRIVER_LOG},
    )
    endpoint = driver.start(r"listening on (tcp://\S+)", timeout=30)
    target = endpoint[len("tcp://"):]
    return driver, target, f"http://127.0.0.1:{http_port}"


def build_stack(name: str, binary: Path, cmi, prism_bin: str | None, sim_args: list[str] | None, *, mock: bool = False,
                spec: Path = SPEC) -> Stack:
    """sim_args None + mock: driver → tap → prism mock. prism_bin None: no Prism (direct)."""
    started: list = []
    try:
        sim = sim_url = prism = tap = None
        if mock:
            prism = Prism(prism_bin, spec, "mock", LOG_DIR, f"{name}-prism-mock").start()
            started.append(prism)
            tap = Tap(prism.url)
            started.append(tap)
            api_url = tap.url
        else:
            sim, sim_url = start_sim(binary, name, sim_args or [])
            started.append(sim)
            if prism_bin:
                prism = Prism(prism_bin, spec, "proxy", LOG_DIR, f"{name}-prism-proxy", upstream=sim_url).start()
                started.append(prism)
                tap = Tap(prism.url)
                started.append(tap)
                api_url = tap.url
            else:
                tap = Tap(sim_url)
                started.append(tap)
                api_url = tap.url
        driver, target, http_url = start_driver(binary, name, api_url)
        started.append(driver)
        client = Driver(target, *cmi)
        return Stack(name, sim, sim_url, prism, tap, driver, target, http_url, api_url, client)
    except BaseException:
        for s in reversed(started):
            try:
                s.close() if isinstance(s, Tap) else s.stop()
            except Exception:
                pass
        raise


MAIN_SIM_ARGS = [
    "--project", PROJECT, "--project", OTHER_PROJECT,
    "--token", "sim-token", "--token", f"{OTHER_TOKEN}:{OTHER_PROJECT}",
    "--provision-seconds", "0.5", "--deprovision-seconds", "0.5",
    "--per-page-max", str(PER_PAGE_MAX),
    "--capacity", f"{NO_CAPACITY[0]}:{NO_CAPACITY[1]}=0",
    "--reservation", f"{RESERVATION_SV}=sv:c3.medium.x86",
    "--reservation", f"{RESERVATION_DA}=da:c3.small.x86",
]


@pytest.fixture(scope="session")
def main_stack(binary, cmi, prism_bin):
    """sim (per-page-max 5, two projects, capacity 0 for sv:m3.large.x86, two reservations)
    → Prism proxy → tap → serve."""
    s = build_stack("main", binary, cmi, prism_bin, MAIN_SIM_ARGS)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def fault_stack(binary, cmi, prism_bin):
    """sim with 30 % injected 429 (Retry-After) → Prism proxy → tap → serve."""
    s = build_stack("faults429", binary, cmi, prism_bin,
                    ["--fault-rate-429", "0.3", "--provision-seconds", "0.2", "--deprovision-seconds", "0.2"])
    yield s
    s.stop()


@pytest.fixture(scope="module")
def lossy_stack(binary, cmi):
    """sim that drops 25 % of responses after executing the request and fails 10 % with 5xx
    → tap → serve (no Prism: a dropped connection is not an API response to validate)."""
    s = build_stack("lossy", binary, cmi, None,
                    ["--fault-rate-drop", "0.25", "--fault-rate-5xx", "0.1", "--provision-seconds", "0.2", "--deprovision-seconds", "0.2"])
    yield s
    s.stop()


MOCK_CLUSTER = "shoot--conf--prism-mock"
MOCK_TAGS = [f"kubernetes.io/cluster/{MOCK_CLUSTER}", "kubernetes.io/role/node"]


def mock_spec_overlay(out: Path) -> Path:
    """The bundled spec with one added `example` (Device.tags = our cluster's tags), as JSON.

    Prism's static mock answers with the schema's examples; the spec has none for a
    device, so Prism would send `tags: ["string"]`, and the driver rightly refuses to act
    on a device outside its cluster (design §5). The example is not part of validation:
    schemas are untouched (test_prism_mock checks that this is the only difference).
    """
    import json

    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(SPEC, encoding="utf-8") as f:
        doc = yaml.load(f, Loader=loader)
    doc["components"]["schemas"]["Device"]["properties"]["tags"]["example"] = MOCK_TAGS
    out.write_text(json.dumps(doc))
    return out


@pytest.fixture(scope="module")
def mock_stack(binary, cmi, prism_bin):
    """serve → tap → `prism mock` (static examples, stateless) on the spec + one tags example."""
    s = build_stack("mock", binary, cmi, prism_bin, None, mock=True,
                    spec=mock_spec_overlay(LOG_DIR / "mock-spec.json"))
    yield s
    s.stop()


STACK_FIXTURES = ("main_stack", "fault_stack", "mock_stack")


def violation_report(name: str, prism: Prism, tap: Tap | None, mark: int, tap_mark: int, extra=()) -> str:
    """'' when Prism logged no violation since `mark`, else a report listing each one and,
    from the tap, the exchanges that carried violations (request body, sl-violations,
    problem+json)."""
    found, accepted = prism.violations_since(mark, tuple(extra))
    exchanges = tap.since(tap_mark) if tap else []
    prism_made = [e for e in exchanges if e.problem and str(e.problem.get("type", "")).startswith("https://stoplight.io/prism/errors")]
    # An error answer made by Prism with no matching log line means the scanner missed a
    # log format: fail rather than pass silently (unless accepted deviations explain it).
    missed = prism_made and not found and not accepted
    if not found and not missed:
        return ""
    lines = [f"Prism ({prism.mode}, stack '{name}', log {prism.log_path}) reported {len(found)} violation(s):"]
    lines += [f"  - {v}" for v in found]
    detail = [e for e in exchanges if e.violations or e.problem]
    if detail:
        lines.append("  exchanges with violations (from the tap):")
        lines += [f"    * {e.describe()}" for e in detail]
    return "\n".join(lines)


@pytest.fixture(autouse=True)
def prism_guard(request):
    """Fail any test during which Prism logged a request or response violation."""
    stacks = [request.getfixturevalue(n) for n in STACK_FIXTURES if n in request.fixturenames]
    extra = tuple(Deviation(*m.args) for m in request.node.iter_markers("prism_allow"))
    marks = [(s, s.prism.mark(), s.tap.mark()) for s in stacks if s.prism]
    yield
    report = [violation_report(s.name, s.prism, s.tap, m, tm, extra) for s, m, tm in marks]
    report = [r for r in report if r]
    if report:
        pytest.fail("OpenAPI violations (the spec is the contract; see shared/reference/metal-api/SOURCE.md):\n" + "\n".join(report), pytrace=False)


# --------------------------------------------------------------------------------------
# helpers for tests


@pytest.fixture
def cluster(request):
    """A cluster name unique to this test, so list results never mix between tests."""
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:30]
    return f"shoot--conf--{base}-{uuid.uuid4().hex[:6]}"
