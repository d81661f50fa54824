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
def browser():
    """One Chromium for the module (Playwright's sync API allows one driver per thread)."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(stack, browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(20000)
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.base = stack.dashboard_url  # type: ignore[attr-defined]
    pg.console_errors = errors  # type: ignore[attr-defined]
    yield pg
    ctx.close()


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
    page.fill("#vm_id", "vm-browser")  # a text field with a hint list of the first page's VMs
    page.select_option("#type", "vm.preboot")
    page.click("button[type=submit]:has-text('Simulate')")
    content = page.content()
    assert "vvol-browser" in content and "would attach" in content and "attach_on=preboot" in content
    shot(page, "06-simulate")


def test_4b_policies_are_paged_with_a_next_page_link(page):
    """Two policies a page: the Next page link (a signed cursor) leads to the following ones, none twice, in
    the listing's order (docs/policy-pages.md)."""
    page.goto(page.base + "/policies?per_page=2")
    if "/login" in page.url:  # run on its own (-k policies)
        page.fill("#username", "admin")
        page.fill("#password", "admin-pass-123")
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: "/login" not in url)
        page.goto(page.base + "/policies?per_page=2")
    seen: list[str] = []
    for _ in range(50):
        seen += [t.strip() for t in page.locator("table.policies tbody tr td:first-child a").all_inner_texts()]
        link = page.locator("nav.pager a[rel=next]")
        if link.count() == 0:
            break
        assert len(seen) % 2 == 0
        link.click()
        page.wait_for_load_state("load")
        assert "cursor=" in page.url and "per_page=2" in page.url
    shot(page, "06b-policies-last-page")
    assert len(seen) == len(set(seen)) >= 5 and {"vvol-1", "vvol-2", "vvol-5"} <= set(seen)
    assert "Last page" in page.content()


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


# ---- every page at a phone's width and a desktop's: nothing overflows, the page's main part is visible, no
# identifier is broken across lines. Screenshots: tests/artifacts/<page>-<width>.png (look at them).

WIDTHS = (390, 1280)
LONG_EVENT_ID = "layout-" + "e" * 113 + "-0000001"
LONG_VOLUME_ID = "vvol-" + "v" * 54 + "-0001"
LONG_VM_ID = "vm-" + "m" * 56 + "-0001"

# JavaScript: every whitespace-free word inside an id-like element (.mono, .id, code) must sit on one line.
BROKEN_IDS_JS = """() => {
  const broken = [];
  for (const el of document.querySelectorAll('main .mono, main .id, main code, main .kv, header .id')) {
    const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      const re = /\\S+/g; let m;
      while ((m = re.exec(node.data)) !== null) {
        const r = document.createRange(); r.setStart(node, m.index); r.setEnd(node, m.index + m[0].length);
        const tops = new Set([...r.getClientRects()].filter(x => x.width > 0).map(x => Math.round(x.top)));
        if (tops.size > 1) broken.push(m[0]);
      }
    }
  }
  return broken;
}"""

OVERFLOW_JS = """() => {
  const vw = document.documentElement.clientWidth;
  const wide = [...document.querySelectorAll('body *')].filter(e => {
    const r = e.getBoundingClientRect(); return r.width > 0 && (r.right > vw + 1 || r.left < -1);
  }).slice(0, 5).map(e => e.tagName.toLowerCase() + (e.className ? '.' + String(e.className).split(' ').join('.') : '')
                      + ' ' + (e.textContent || '').trim().slice(0, 40));
  return {scroll: document.documentElement.scrollWidth, viewport: window.innerWidth, wide};
}"""


@pytest.fixture(scope="module")
def layout(stack, browser):
    """A signed-in admin page per width, and something attached (vm-2: preboot/shutdown) for /attachments."""
    # the longest ids the API allows: a 128-character event id, 64-character volume and VM ids
    r = stack.vvg("event", "send", "vm.preboot", "--vm", "vm-2", "--host", stack.host_id, "--secret",
                  stack.host_secret, "--url", stack.api_url, "--event-id", LONG_EVENT_ID)
    assert r.code == 0, r
    r = stack.vvg("policy", "apply", "-", stdin=json.dumps({"volumes": [{
        "volume_id": LONG_VOLUME_ID, "vm_id": LONG_VM_ID, "host_id": "host-1", "storage_array": "S1", "size_mb": 1,
        "attach_on": "request", "detach_on": "request"}]}))
    assert r.code == 0, r
    r = stack.vvg("policy", "apply", "-", stdin=json.dumps({"volumes": [{  # an EC2 VM: Start and Stop (docs/ec2-vms.md)
        "volume_id": "vvol-ec2-layout", "vm_id": "vm-ec2-layout", "host_id": "aws-ec2", "storage_array": "S1",
        "size_mb": 1, "attach_on": "request", "detach_on": "request"}]}))
    assert r.code == 0, r
    pages = {}
    for width in WIDTHS:
        ctx = browser.new_context(viewport={"width": width, "height": 800})
        pg = ctx.new_page()
        pg.set_default_timeout(20000)
        pg.console_errors = []  # type: ignore[attr-defined]
        pg.on("console", lambda m, pg=pg: pg.console_errors.append(m.text) if m.type == "error" else None)
        pg.goto(stack.dashboard_url + "/login")
        pg.fill("#username", "admin")
        pg.fill("#password", "admin-pass-123")
        pg.click("button[type=submit]")
        pg.wait_for_url("**/policies")
        pages[width] = pg
    yield pages
    for pg in pages.values():
        pg.context.close()
    stack.vvg("event", "send", "vm.shutdown", "--vm", "vm-2", "--host", stack.host_id, "--secret",
              stack.host_secret, "--url", stack.api_url)


def _simulate_result(pg) -> None:
    pg.fill("#vm_id", "vm-1")
    pg.select_option("#type", "vm.preboot")
    pg.click("button[type=submit]:has-text('Simulate')")


IMPACT_DRAFT = ("volumes:\n  - {volume_id: vvol-1, vm_id: vm-1, host_id: host-1, storage_array: S1, size_mb: 10, "
                "attach_on: preboot, detach_on: shutdown, os_disk_encryption: true}\n")


def _impact_result(pg) -> None:
    pg.fill("#policy", IMPACT_DRAFT)
    pg.click("button[type=submit]:has-text('Analyse')")


def _enroll(pg) -> None:
    pg.fill("#host_id", f"hv-layout-{pg.viewport_size['width']}")
    pg.fill("#mac", "02:00:00:00:00:42")
    pg.fill("#serial", "SN-LAYOUT-0042")
    pg.click("button[type=submit]:has-text('Enroll host')")


# (name, path, the page's main table or form, an action that leads to the page shown)
PAGES = [
    ("login", "/login", "form input#username", None),
    ("policies", "/policies", "main table", None),
    ("policies-sorted", "/policies?sort=-size_mb", "main table", None),
    ("policies-paged", "/policies?per_page=2&sort=-size_mb", "main nav.pager a[rel=next]", None),
    ("policy-new", "/policies/new", "form.policy-form", None),
    ("policy-edit", "/policies/vvol-1", "form.policy-form", None),
    ("policy-missing", "/policies/vvol-none", "main .empty", None),
    ("simulate", "/simulate", "form.sim-form", None),
    ("simulate-result", "/simulate", "section.result table", _simulate_result),
    ("attachments", "/attachments", "main table", None),
    ("audit", "/audit", "table.audit", None),
    ("audit-filtered", "/audit?vm=vm-1", "table.audit", None),
    ("audit-long-ids", f"/audit?vm={LONG_VM_ID}", "table.audit", None),
    ("policy-long-ids", f"/policies/{LONG_VOLUME_ID}", "form.policy-form", None),
    ("attachments-7d", "/attachments?window=7d", "main figure.chart", None),
    ("hosts", "/hosts", "main table", None),
    ("users", "/users", "main table", None),
    ("alerts", "/alerts", "main h1", None),
    ("vm", "/vms/vm-1", "main table", None),
    ("vm-ec2", "/vms/vm-ec2-layout", "form[action$='/start'] button", None),
    ("vm-preflight", "/vms/vm-1", "section#preflight table", None),
    ("impact", "/policies/impact", "main form textarea#policy", None),
    ("impact-result", "/policies/impact", "section.result", _impact_result),
    ("host-secret", "/hosts", "input#secret", _enroll),
    ("sign-out", "/logout", "main form", None),
    ("not-found", "/no-such-page", "main .card", None),
]


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name,path,main,action", PAGES, ids=[p[0] for p in PAGES])
def test_layout__no_overflow_main_part_visible_ids_whole(layout, browser, stack, name, path, main, action, width):
    pg = layout[width]
    if name == "login":  # signed out: a context of its own
        pg = browser.new_context(viewport={"width": width, "height": 800}).new_page()
    pg.goto(stack.dashboard_url + path)
    if action:
        action(pg)
    pg.wait_for_load_state("load")
    try:
        assert pg.locator(main).first.is_visible(), f"{name}: {main} is not visible at {width}px"
        m = pg.evaluate(OVERFLOW_JS)
        pg.screenshot(path=str(ARTIFACTS / f"{name}-{width}.png"), full_page=True)
        assert m["viewport"] == width
        assert m["scroll"] <= width, f"{name} overflows at {width}px: scrollWidth {m['scroll']}; widest: {m['wide']}"
        assert pg.evaluate(BROKEN_IDS_JS) == [], f"{name}: identifiers broken across lines at {width}px"
        if name != "login":  # a 404 page logs its own status; anything else (a CSP violation) is a failure
            errors = [e for e in pg.console_errors if not (name in ("policy-missing", "not-found") and "404" in e)]
            assert errors == [], errors
            pg.console_errors.clear()
    finally:
        if name == "login":
            pg.context.close()


def test_layout__every_page_in_the_navigation_is_checked(layout, stack):
    """A page added to the menu must be added to PAGES above (checked at both widths)."""
    pg = layout[1280]
    pg.goto(stack.dashboard_url + "/policies")
    nav = pg.eval_on_selector_all("header nav a", "els => els.map(e => new URL(e.href).pathname)")
    assert nav and set(nav) <= {path.split("?")[0] for _, path, _, _ in PAGES}, nav
