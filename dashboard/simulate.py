"""/simulate: dry-run a host event against the policies; the decisions with reasons, no provider call, no write."""
from __future__ import annotations

import re

from flask import Blueprint, current_app, g, render_template, request

from dashboard.auth import role_required
from vvolguard.services.limits import GuessSlots, Refused
from vvolguard.domain.events import TYPES
from vvolguard.errors import VvgError
from vvolguard.domain.policy import ID_RE
from vvolguard.services.policy_pages import first_vms

bp = Blueprint("simulate", __name__)
FIELDS = ("app", "volume_id", "password", "destination_host", "source_host", "apps", "occurred_at")
# Which extra fields each type takes (the webhook's schema decides; this only shapes the form's hints).
NEEDS = {t: set(req) | set(opt) for t, (req, opt) in TYPES.items()}
_APP_LINE = re.compile(r"^\s*([A-Za-z0-9._-]{1,64})\s+([A-Za-z0-9._-]{1,64})\s+(\d{1,6})\s*\Z")
# A simulated request attach checks the volume's password: wrong guesses are limited per user as the
# webhook limits them per volume, so the simulator is no way around the lock. The slots live in DynamoDB
# and are taken before the password is checked, so concurrent requests and other containers share them.
MAX_GUESSES, GUESS_WINDOW_S = 5, 900
VM_HINTS = 50  # policies read for the VM field's hint list


def init_limits(app) -> None:
    """The simulator's password-guess slots of the app, built once (the slots live in DynamoDB)."""
    app.extensions["vvg_sim_slots"] = GuessSlots(app.extensions["vvg"].settings, "sim-guess", MAX_GUESSES,
                                                 GUESS_WINDOW_S)


def _slots() -> GuessSlots:
    return current_app.extensions["vvg_sim_slots"]


def _parse_apps(text: str) -> tuple[list[dict], str | None]:
    apps = []
    for i, line in enumerate(l for l in text.splitlines() if l.strip()):
        m = _APP_LINE.match(line)
        if not m:
            return [], f"apps line {i + 1}: write one product per line as NAME TYPE KEY_BITS, e.g. LUKS disk_encryption 512"
        apps.append({"name": m.group(1), "type": m.group(2), "key_bits": int(m.group(3))})
    return apps, None


def _host_of(vm_id: str) -> str:
    """The host of the VM's policies (one Query of its partition), or "" when it has none."""
    if not ID_RE.match(vm_id):
        return ""
    return next((p.host_id for p in current_app.extensions["vvg"].policies.for_vm(vm_id)), "")


@bp.route("/simulate", methods=("GET", "POST"))
@role_required("viewer")
def simulate():
    """GET: the form. POST (so a password never sits in a URL): the decisions the webhook would make."""
    vms = first_vms(current_app.config.get("VVG_POLICIES_PER_PAGE", VM_HINTS))  # a hint list for the VM field: one page of the policy listing, never all of them
    form = {k: request.form.get(k, "")[:4000] for k in ("vm_id", "host_id", "type", *FIELDS)}
    form["password"] = ""  # never echoed back
    if request.method == "GET":
        form["type"] = request.args.get("type", "vm.preboot")[:40]
        form["vm_id"] = request.args.get("vm_id", "")[:64]
        return render_template("simulate/form.html", vms=vms, types=list(TYPES), needs=NEEDS, form=form, result=None,
                               error=None)
    etype = request.form.get("type", "")
    vm_id = request.form.get("vm_id", "").strip()[:200]
    host_id = request.form.get("host_id", "").strip()[:200] or _host_of(vm_id)
    fields: dict = {"type": etype}
    error = None
    if etype in TYPES:
        for key in NEEDS[etype]:
            if key == "apps":
                fields["apps"], error = _parse_apps(request.form.get("apps", "")[:4000])
            elif key == "password":
                pw = request.form.get("password", "")
                if pw:
                    fields["password"] = pw[:300]
            else:
                value = request.form.get(key, "").strip()[:200]
                if value:
                    fields[key] = value
        occurred = request.form.get("occurred_at", "").strip()[:64]
        if occurred:
            fields["occurred_at"] = occurred
    user = g.user.username
    result = None
    status = 200
    retry_after = None
    slot = None
    if error is None and "password" in fields:
        taken = _slots().take(user)
        if isinstance(taken, Refused):
            retry_after = taken.retry_after
            error, status = (f"Too many simulated attaches with a wrong password ({MAX_GUESSES} in "
                             f"{GUESS_WINDOW_S // 60} minutes). Try again in {retry_after} seconds, or simulate "
                             "without the password."), 429
        else:
            slot = taken
    if error is None and not host_id:
        error, status = f"{vm_id or 'this VM'} has no policies, so its host is not known: name the sending host.", 400
    try:
        if error is None:
            try:
                result = current_app.extensions["vvg"].simulator.run(vm_id, host_id, fields)
            except VvgError as exc:
                error, status = exc.message, 400
    finally:
        if slot is not None and not (result is not None and any(d.reason == "bad_password" for d in result.decisions)):
            _slots().give_back(slot)  # only a wrong password uses up a guess
    if error and status == 200:
        status = 400
    form.update(vm_id=vm_id, host_id=host_id, type=etype)
    resp = current_app.make_response((render_template("simulate/form.html", vms=vms, types=list(TYPES), needs=NEEDS,
                                                      form=form, result=result, error=error), status))
    if retry_after is not None:
        resp.headers["Retry-After"] = str(retry_after)
    return resp
