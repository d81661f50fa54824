"""The dashboard in a real browser: Debian's Chromium driven by Playwright against the running local stack.
Each step saves a screenshot under tests/artifacts/. A missing Chromium is a failure, not a skip."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def page(stack):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        ctx = browser.new_context(viewport={"width": 1360, "height": 900})
        pg = ctx.new_page()
        pg.set_default_timeout(20000)
        errors: list[str] = []
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        pg.base = stack.dashboard_url  # type: ignore[attr-defined]
        pg.console_errors = errors  # type: ignore[attr-defined]
        yield pg
        browser.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_1_sign_in(page):
    page.goto(page.base + "/policies")
    assert "/login" in page.url
    page.fill("#username", "admin")
    page.fill("#password", "admin-pass-123")
    shot(page, "01-login")
    page.click("button[type=submit]")
    page.wait_for_url("**/policies")
    assert page.locator("table").count() >= 1
    assert "vvol-1" in page.content()
    shot(page, "02-policies")


def test_2_create_a_policy_and_see_it_listed(page):
    page.goto(page.base + "/policies/new")
    page.fill("#volume_id", "vvol-browser")
    page.fill("#vm_id", "vm-browser")  # its own VM: the stack is shared with other end-to-end tests
    page.fill("#host_id", "host-1")
    page.fill("#storage_array", "S1")
    page.fill("#size_mb", "20")
    page.select_option("#attach_on", "preboot")
    page.select_option("#detach_on", "shutdown")
    shot(page, "03-policy-new")
    page.click("button[type=submit]:has-text('Create policy')")
    page.goto(page.base + "/policies?vm_id=vm-browser")
    assert "vvol-browser" in page.content()
    shot(page, "04-policy-listed")


def test_3_edit_it(page):
    page.goto(page.base + "/policies/vvol-browser")
    page.fill("#size_mb", "30")
    page.click("button[type=submit]:has-text('Save changes')")
    page.goto(page.base + "/policies/vvol-browser")
    assert page.input_value("#size_mb") == "30"
    assert "size_mb" in page.content()  # the change history names the changed field
    shot(page, "05-policy-edited")


def test_4_simulate_a_preboot(page):
    page.goto(page.base + "/simulate")
    page.select_option("#vm_id", "vm-browser")
    page.select_option("#type", "vm.preboot")
    page.click("button[type=submit]:has-text('Simulate')")
    content = page.content()
    assert "vvol-browser" in content and "would attach" in content and "attach_on=preboot" in content
    shot(page, "06-simulate")


def test_5_a_real_signed_event_appears_on_the_audit_page(page, stack):
    r = stack.vvg("event", "send", "vm.preboot", "--vm", "vm-3", "--host", stack.host_id, "--secret",
                  stack.host_secret, "--url", stack.api_url, "--event-id", "browser-e2e-1")
    assert r.code == 0, r
    assert json.loads(r.out)["decisions"][0]["outcome"] in ("done", "skipped")
    page.goto(page.base + "/audit?vm=vm-3")
    assert "browser-e2e-1" in page.content()
    shot(page, "07-audit")
    page.goto(page.base + "/attachments")
    shot(page, "08-attachments")
    page.goto(page.base + "/hosts")
    shot(page, "09-hosts")
    assert page.console_errors == [], page.console_errors  # e.g. CSP violations
    stack.vvg("event", "send", "vm.shutdown", "--vm", "vm-3", "--host", stack.host_id, "--secret",
              stack.host_secret, "--url", stack.api_url)
