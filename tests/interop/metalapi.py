"""A tiny Metal API client for the tests themselves (set up devices, check what the driver did).

Calls go to whatever base URL the stack gives (normally the tap in front of Prism), so the
suite's own requests are validated against the spec too.
"""

from __future__ import annotations

import time

import requests

from cmiclient import PROJECT, TOKEN


class MetalApi:
    def __init__(self, base_url: str, token: str = TOKEN, project: str = PROJECT, retries: int = 0):
        """retries > 0: GET and DELETE are retried on connection errors, 429 and 5xx (for
        stacks with injected faults)."""
        self.base = base_url.rstrip("/")
        self.project = project
        self.retries = retries
        self.s = requests.Session()
        self.s.headers.update({"X-Auth-Token": token, "Accept": "application/json"})

    def _idempotent(self, method: str, url: str, **kw) -> requests.Response:
        for attempt in range(self.retries + 1):
            try:
                r = self.s.request(method, url, timeout=30, **kw)
            except requests.ConnectionError:
                if attempt == self.retries:
                    raise
                self.s.close()
                time.sleep(0.1)
                continue
            if r.status_code in (429, 500, 502, 503, 504) and attempt < self.retries:
                time.sleep(min(float(r.headers.get("Retry-After") or 0.2), 2.0))
                continue
            return r
        raise AssertionError("unreachable")

    def get_device(self, device_id: str) -> requests.Response:
        return self._idempotent("GET", f"{self.base}/devices/{device_id}")

    def create_device(self, **body) -> dict:
        r = self.s.post(f"{self.base}/projects/{self.project}/devices", json=body, timeout=30)
        assert r.status_code == 201, f"create device: {r.status_code} {r.text[:500]}"
        return r.json()

    def devices(self, tag: str | None = None, per_page: int = 100) -> list[dict]:
        """Every device of the project (following pages), optionally filtered by tag."""
        out: list[dict] = []
        page = 1
        while True:
            params = {"page": page, "per_page": per_page}
            if tag:
                params["tag"] = tag
            r = self._idempotent("GET", f"{self.base}/projects/{self.project}/devices", params=params)
            assert r.status_code == 200, f"list devices: {r.status_code} {r.text[:500]}"
            body = r.json()
            out.extend(body.get("devices", []))
            meta = body.get("meta") or {}
            if not body.get("devices") or not meta.get("next") or meta.get("current_page", page) >= meta.get("last_page", page):
                return out
            page += 1
            assert page < 1000, "runaway pagination"

    def wait_state(self, device_id: str, states: set[str], timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            r = self.get_device(device_id)
            if r.status_code == 200:
                last = r.json()
                if last.get("state") in states:
                    return last
            time.sleep(0.2)
        raise AssertionError(f"device {device_id} not in {states} after {timeout}s; last={last and last.get('state')}")

    def delete_device(self, device_id: str) -> int:
        return self._idempotent("DELETE", f"{self.base}/devices/{device_id}").status_code
