"""The move confirmation of the policy form (docs/policy-apply.md) in Debian's Chromium against the local
stack: the diff is shown and nothing saved until the box is ticked; no JavaScript; fits a phone."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_browser import ARGS, ARTIFACTS, CHROMIUM, shot

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


@pytest.fixture(scope="module")
def page(stack):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        ctx = browser.new_context(viewport={"width": 390, "height": 844}, java_script_enabled=False)
        pg = ctx.new_page()
        pg.set_default_timeout(20000)
        pg.base = stack.dashboard_url  # type: ignore[attr-defined]
        pg.goto(pg.base + "/login")
        pg.fill("#username", "admin")
        pg.fill("#password", "admin-pass-123")
        pg.click("button[type=submit]")
        pg.wait_for_url("**/policies")
        yield pg
        browser.close()



def test_move__diff_then_confirm__saved_only_after_the_box_is_ticked(page, stack):
    page.goto(page.base + "/policies/new")
    for field, value in (("volume_id", "vvol-move"), ("vm_id", "vm-move"), ("host_id", "host-1"),
                         ("storage_array", "S1"), ("size_mb", "10")):
        page.fill(f"#{field}", value)
    page.click("button[type=submit]:has-text('Create policy')")
    page.goto(page.base + "/policies/vvol-move")
    page.fill("#vm_id", "vm-move-2")
    page.click("button[type=submit]:has-text('Save changes')")
    diff = page.locator("#diff")
    assert diff.count() == 1
    text = diff.inner_text()
    assert "vm_id" in text and "vm-move" in text and "vm-move-2" in text and "moves to another VM" in text
    shot(page, "policy-move-diff")
    r = stack.vvg("policy", "export")
    assert '"vm_id": "vm-move"' in r.out and "vm-move-2" not in r.out  # nothing saved yet
    page.check("#confirm_move")
    page.click("button[type=submit]:has-text('Confirm and save')")
    page.wait_for_url("**/policies/vvol-move")
    assert page.locator("#diff").count() == 0 and page.input_value("#vm_id") == "vm-move-2"
    assert '"vm_id": "vm-move-2"' in stack.vvg("policy", "export").out
    shot(page, "policy-move-saved")
