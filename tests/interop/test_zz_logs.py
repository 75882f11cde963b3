"""Runs last (file order): no secret reached any driver log during the whole run.

The driver logs at `metal_driver=debug` here (conftest DRIVER_LOG). Secrets that passed
through it: the API tokens and the userData of every request (design §4), and the
`root_password` the API returns on devices (notes/metal-api.md: never log responses).
"""

from __future__ import annotations

from conftest import LOG_DIR, OTHER_TOKEN
from cmiclient import TOKEN, USER_DATA


def _root_passwords(stack) -> set[str]:
    out = set()
    for e in stack.tap.exchanges:
        body = e.response_json
        devices = body.get("devices", []) if isinstance(body, dict) and "devices" in body else [body]
        for d in devices:
            if isinstance(d, dict) and isinstance(d.get("root_password"), str) and len(d["root_password"]) >= 6:
                out.add(d["root_password"])
    return out


def test_no_secret_in_driver_logs(main_stack):
    logs = sorted(LOG_DIR.glob("*-serve.log"))
    assert logs, f"no driver logs in {LOG_DIR}"
    secrets = {
        "apiToken sim-token": TOKEN,
        "apiToken of the other project": OTHER_TOKEN,
        "invalid apiToken": "not-a-valid-token",
        "userData": USER_DATA.decode().strip().splitlines()[-1],
    }
    for i, pw in enumerate(sorted(_root_passwords(main_stack))[:50]):
        secrets[f"root_password #{i}"] = pw
    leaks = []
    for path in logs:
        text = path.read_text(errors="replace")
        for what, value in secrets.items():
            if value in text:
                line = next(ln for ln in text.splitlines() if value in ln)
                leaks.append(f"{path.name}: {what} in: {line[:300]}")
    assert not leaks, "secrets in driver logs:\n" + "\n".join(leaks)
    assert sum(p.stat().st_size for p in logs) > 0
