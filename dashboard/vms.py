"""/vms/<vm_id>: one VM's policies and attachments, its quarantine, its preflight checks and its recent audit;
admins quarantine and release it there (break-glass, docs/break-glass.md); editors start and stop an EC2 VM
(docs/ec2-vms.md)."""
from __future__ import annotations

from datetime import datetime, timezone

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for

from dashboard.auth import actor, role_required
from vvolguard.domain.policy import ID_RE
from vvolguard.errors import VvgError
from vvolguard.services.diagnostics import CLIENT_ERRORS
from vvolguard.services.keys import key_states
from vvolguard.services.quarantine import MAX_REASON, QuarantineService
from vvolguard.services.vms import is_ec2_vm

bp = Blueprint("vms", __name__)


def _service() -> QuarantineService:
    return current_app.extensions["vvg"].quarantine


def _vm(vm_id: str) -> str:
    if not ID_RE.match(vm_id):
        abort(404)
    return vm_id


@bp.get("/vms/<vm_id>")
@role_required("viewer")
def vm_page(vm_id: str):
    """The VM's policies with their attachment state, its quarantine and its last audit records."""
    _vm(vm_id)
    root = current_app.extensions["vvg"]
    policies = sorted(root.policies.for_vm(vm_id), key=lambda p: p.volume_id)
    quarantine = root.quarantine.state(vm_id)
    if not policies and quarantine is None:
        abort(404)
    audit = list(root.audit.recent(vm_id=vm_id, limit=20))
    keyvols = key_states(p.volume_id for p in policies)  # one BatchGet (docs/key-volume.md), never key bytes
    preflight, preflight_error = None, None
    try:  # will this VM boot? (docs/preflight.md)
        preflight = root.preflight.run(vm_id)
    except (VvgError, *CLIENT_ERRORS) as exc:
        preflight_error = getattr(exc, "message", None) or type(exc).__name__
    return render_template("vms/page.html", vm_id=vm_id, policies=policies, quarantine=quarantine, audit=audit,
                           keyvols=keyvols, now=datetime.now(timezone.utc), max_reason=MAX_REASON,
                           ec2_vm=is_ec2_vm(policies), preflight=preflight, preflight_error=preflight_error)


@bp.post("/vms/<vm_id>/quarantine")
@role_required("admin")
def quarantine(vm_id: str):
    """Detach every volume of the VM now and refuse its attaches until released."""
    _vm(vm_id)
    reason = request.form.get("reason", "")[:MAX_REASON + 1]
    try:
        out = _service().quarantine(vm_id, reason, actor=actor())
    except VvgError as exc:
        flash(f"Not quarantined: {exc.message.replace('--reason', 'the reason')}", "error")
        return redirect(url_for("vms.vm_page", vm_id=vm_id))
    flash(f"{vm_id} is quarantined: {out['detached']} volume(s) detached, every attach refused until released.", "ok")
    return redirect(url_for("vms.vm_page", vm_id=vm_id))


@bp.post("/vms/<vm_id>/release")
@role_required("admin")
def release(vm_id: str):
    """End the quarantine: the VM's policies decide again."""
    _vm(vm_id)
    try:
        _service().release(vm_id, actor=actor())
    except VvgError as exc:
        flash(f"Not released: {exc.message}", "error")
        return redirect(url_for("vms.vm_page", vm_id=vm_id))
    flash(f"{vm_id} is released: its policies decide its attaches again.", "ok")
    return redirect(url_for("vms.vm_page", vm_id=vm_id))


def _decisions(out: dict) -> str:
    """The decisions of a start or stop, one short clause each (volume, action, outcome, reason)."""
    parts = [f"{d['volume_id']} {d['action']} {d['outcome']}" + (f" ({d['reason']})" if d.get("reason") else "")
             for d in out.get("decisions", []) if d.get("outcome") != "skipped"]
    return "; ".join(parts) if parts else "no volume changed"


@bp.post("/vms/<vm_id>/start")
@role_required("editor")
def start(vm_id: str):
    """EC2 VM: create its missing volumes, attach the preboot ones to the stopped instance, start it."""
    return _ec2_action(vm_id, "start", "started")


@bp.post("/vms/<vm_id>/stop")
@role_required("editor")
def stop(vm_id: str):
    """EC2 VM: stop the instance, then detach every volume still attached."""
    return _ec2_action(vm_id, "stop", "stopped")


def _ec2_action(vm_id: str, verb: str, done: str):
    """`vvg vm start` / `vvg vm stop` from the VM page (docs/ec2-vms.md); the decisions shown after the redirect."""
    _vm(vm_id)
    try:
        out = getattr(current_app.extensions["vvg"].vms, verb)(vm_id, actor=actor())
    except VvgError as exc:
        flash(f"Not {done}: {exc.message}", "error")
        return redirect(url_for("vms.vm_page", vm_id=vm_id))
    flash(f"{vm_id} {done} (instance {out['instance_id']} {out['instance_state']}): {_decisions(out)}.", "ok")
    return redirect(url_for("vms.vm_page", vm_id=vm_id))
