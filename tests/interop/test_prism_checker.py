"""(f) Self-test of the violation checker: wrong requests and wrong responses sent through
a real Prism proxy must be reported by the same scanner and report function the guard
uses, with the details; correct traffic must not be; the documented spec deviation
(429/5xx) must be accepted with its reason and nothing else.

The upstream here is a tiny fake server with canned answers, so the test depends on
neither the simulator nor the driver.
"""

from __future__ import annotations

import http.server
import json
import threading
import uuid

import pytest
import requests

from conftest import LOG_DIR, SPEC, violation_report
from prism import UNDECLARED_RETRY_STATUS, Prism, scan_lines
from tap import Tap

PROJECT = "5d1ef2a4-0000-4000-8000-000000000001"
GOOD_ID = "0b6a4b3c-0000-4000-8000-00000000c0de"
NULL_ID = "0b6a4b3c-0000-4000-8000-000000000011"
ENUM_ID = "0b6a4b3c-0000-4000-8000-000000000e11"
RATE_ID = "0b6a4b3c-0000-4000-8000-000000000429"
TEAPOT_ID = "0b6a4b3c-0000-4000-8000-000000000418"

GOOD_DEVICE = {"id": GOOD_ID, "hostname": "ok", "state": "active", "tags": ["a"], "metro": {"code": "sv"}}
CANNED = {
    f"/devices/{GOOD_ID}": (200, GOOD_DEVICE, {}),
    # `description: null`: the real API does this (packngo PR #182) but the spec has no nullable.
    f"/devices/{NULL_ID}": (200, dict(GOOD_DEVICE, id=NULL_ID, description=None), {}),
    f"/devices/{ENUM_ID}": (200, dict(GOOD_DEVICE, id=ENUM_ID, state="exploded"), {}),
    f"/devices/{RATE_ID}": (429, {"error": "slow down"}, {"Retry-After": "1"}),
    f"/devices/{TEAPOT_ID}": (418, {"error": "teapot"}, {}),
    f"/projects/{PROJECT}/devices": (200, {"devices": [GOOD_DEVICE], "meta": {"next": None, "total": 1}}, {}),
}


class FakeUpstream:
    def __init__(self):
        self.requests: list[tuple[str, str]] = []
        up = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                up.requests.append((self.command, self.path))
                route = self.path.split("?")[0]
                if self.command == "DELETE":
                    self.send_response(204)
                    self.end_headers()
                    return
                if self.command == "POST" and route == f"/projects/{PROJECT}/devices":
                    status, body, headers = 201, GOOD_DEVICE, {}
                else:
                    status, body, headers = CANNED.get(route, (404, {"error": "not found"}, {}))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PUT = _answer

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def checked(prism_bin):
    up = FakeUpstream()
    prism = Prism(prism_bin, SPEC, "proxy", LOG_DIR, "selftest-prism-proxy", upstream=up.url).start()
    tap = Tap(prism.url)
    yield up, prism, tap
    tap.close()
    prism.stop()
    up.close()


def _run(checked, fn):
    """Run fn(session, base_url); return (violations, accepted, report)."""
    up, prism, tap = checked
    mark, tmark = prism.mark(), tap.mark()
    s = requests.Session()
    s.headers["X-Auth-Token"] = "t"
    fn(s, tap.url)
    report = violation_report("selftest", prism, tap, mark, tmark)
    found, accepted = prism.violations_since(mark)
    return found, accepted, report


def test_clean_traffic_reports_nothing(checked):
    def fn(s, base):
        assert s.get(f"{base}/devices/{GOOD_ID}", params={"include": "project"}).status_code == 200
        assert s.delete(f"{base}/devices/{GOOD_ID}").status_code == 204

    found, accepted, report = _run(checked, fn)
    assert found == [] and accepted == [] and report == ""


def test_null_field_in_response_is_reported(checked):
    found, _, report = _run(checked, lambda s, b: s.get(f"{b}/devices/{NULL_ID}"))
    assert any(v.severity == "terminated" and "VIOLATIONS" in v.text and NULL_ID in v.request for v in found), found
    assert "description" in report and "must be string" in report, report


def test_wrong_enum_in_response_is_reported(checked):
    found, _, report = _run(checked, lambda s, b: s.get(f"{b}/devices/{ENUM_ID}"))
    assert found, "a device with state 'exploded' passed the checker"
    assert "state" in report and "allowed values" in report, report


def test_null_meta_next_is_reported(checked):
    """`meta.next: null` at the last page: what the real API sends, and a spec violation
    (SOURCE.md 'Known defects'): our simulator must omit it instead."""
    found, _, report = _run(checked, lambda s, b: s.get(f"{b}/projects/{PROJECT}/devices"))
    assert found and "meta.next" in report, report


def test_invalid_request_body_is_reported_and_not_forwarded(checked):
    up = checked[0]
    before = len(up.requests)
    body = {"metro": "sv", "facility": ["sv15"], "plan": "c3.small.x86", "operating_system": "ubuntu_22_04", "billing_cycle": "weekly"}
    found, _, report = _run(checked, lambda s, b: s.post(f"{b}/projects/{PROJECT}/devices", json=body))
    assert any("UNPROCESSABLE_ENTITY" in v.text for v in found), found
    assert "billing_cycle" in report and "oneOf" in report, report
    assert not [r for r in up.requests[before:] if r[0] == "POST"], "Prism forwarded an invalid request"


def test_valid_request_body_passes(checked):
    body = {"metro": "sv", "plan": "c3.small.x86", "operating_system": "ubuntu_22_04", "billing_cycle": "hourly",
            "hostname": "m", "tags": ["kubernetes.io/cluster/x"], "userdata": "#cloud-config\n"}
    found, _, report = _run(checked, lambda s, b: s.post(f"{b}/projects/{PROJECT}/devices", json=body))
    assert found == [] and report == "", report


def test_non_uuid_path_and_missing_token_are_reported(checked):
    def fn(s, base):
        s.get(f"{base}/devices/not-a-uuid")
        requests.get(f"{base}/devices/{GOOD_ID}")  # no X-Auth-Token

    found, _, report = _run(checked, fn)
    texts = " | ".join(str(v) for v in found)
    assert "UNPROCESSABLE_ENTITY" in texts and "UNAUTHORIZED" in texts, texts
    assert 'must match format \\"uuid\\"' in report or 'must match format "uuid"' in report, report


def test_route_outside_the_spec_is_reported(checked):
    """e.g. a client that keeps the /metal/v1 prefix in front of Prism."""
    found, _, _ = _run(checked, lambda s, b: s.get(f"{b}/metal/v1/devices/{GOOD_ID}"))
    assert any("NO_PATH_MATCHED" in v.text for v in found), found


def test_429_is_an_accepted_deviation_but_other_undeclared_statuses_are_not(checked):
    found, accepted, report = _run(checked, lambda s, b: s.get(f"{b}/devices/{RATE_ID}"))
    assert found == [] and report == ""
    assert accepted and accepted[0][1] is UNDECLARED_RETRY_STATUS and accepted[0][0].upstream_status == 429
    found, accepted, report = _run(checked, lambda s, b: s.get(f"{b}/devices/{TEAPOT_ID}"))
    assert any(v.upstream_status == 418 and "Unable to match the returned status code" in v.text for v in found), found


def test_scanner_on_canned_log_lines():
    """The log formats the scanner relies on (Prism 5.x, text logs, no colours when piped)."""
    rid = uuid.uuid4()
    lines = [
        f"[1:00:00 PM] › [HTTP SERVER] get /devices/{rid} ℹ  info      Request received",
        "[1:00:00 PM] ›     [PROXY] ℹ  info      The upstream call to /devices/x has returned 200",
        f"[1:00:00 PM] › [HTTP SERVER] get /devices/{rid} ✖  error     Request terminated with error: https://stoplight.io/prism/errors#VIOLATIONS: Request/Response not valid",
        "[1:00:01 PM] › [HTTP SERVER] get /devices/y ℹ  info      Request received",
        "[1:00:01 PM] ›     [PROXY] ℹ  info      The upstream call to /devices/y has returned 429",
        "[1:00:01 PM] ›     [VALIDATOR] ⚠  warning   Violation: response Unable to match the returned status code with those defined in the document: 200,401,403,404",
        "[1:00:02 PM] › [HTTP SERVER] post /projects/p/devices ℹ  info      Request received",
        "[1:00:02 PM] ›     [VALIDATOR] ✖  error     Violation: request.body.billing_cycle Request body property billing_cycle must be equal to one of the allowed values",
        "[1:00:03 PM] › [HTTP SERVER] get /__conformance_sync__/abc ✖  error     Request terminated with error: https://stoplight.io/prism/errors#NO_PATH_MATCHED_ERROR",
        "\x1b[32m[1:00:04 PM] › [HTTP SERVER] get /devices/z ℹ  info      Request received\x1b[39m",
    ]
    found, accepted = scan_lines(lines)
    assert [v.severity for v in found] == ["terminated", "error"]
    assert found[0].request == f"GET /devices/{rid}" and found[0].upstream_status == 200
    assert found[1].request == "POST /projects/p/devices" and "billing_cycle" in found[1].text
    assert len(accepted) == 1 and accepted[0][0].upstream_status == 429


@pytest.mark.prism_allow(
    "guard-self-test", r"UNPROCESSABLE_ENTITY",
    "this test sends a request with a non-UUID device id on purpose, to prove the guard sees main-stack traffic")
def test_guard_sees_the_main_stack_and_honours_prism_allow(main_stack):
    """The autouse guard watches the stacks a test uses; `prism_allow` accepts a named
    deviation. Without the marker this very test would fail in teardown."""
    mark, tmark = main_stack.prism.mark(), main_stack.tap.mark()
    r = requests.get(f"{main_stack.api_url}/devices/not-a-uuid", headers={"X-Auth-Token": "sim-token"}, timeout=30)
    assert r.status_code == 422
    report = violation_report("main", main_stack.prism, main_stack.tap, mark, tmark)
    assert "UNPROCESSABLE_ENTITY" in report and "/devices/not-a-uuid" in report, report
