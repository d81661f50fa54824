"""/policies/impact (docs/policy-impact.md): an editor pastes or uploads a draft policy file and sees its
diff against the table and the replay of the period's recorded host events through it. Reads only."""
from __future__ import annotations

from flask import Blueprint, current_app, render_template, request

from dashboard.auth import role_required
from vvolguard.domain.policy import MAX_FILE_BYTES, parse_policy_text
from vvolguard.errors import InvalidInput, PolicyValidationError
from vvolguard.services.impact import parse_period

bp = Blueprint("impact", __name__)
SHOWN = 500  # changed decisions listed on the page (the total is always shown)
PERIODS = ("30m", "12h", "1d", "7d", "30d", "90d")


def _draft() -> tuple[bytes, str]:
    """The uploaded file if one was chosen, else the pasted text (the app caps the whole request)."""
    upload = request.files.get("file")
    if upload is not None and upload.filename:
        name = upload.filename.rsplit("/", 1)[-1].rsplit("\\", 1)[-1][:100] or "upload"
        return upload.stream.read(MAX_FILE_BYTES + 1), name
    return request.form.get("policy", "").encode("utf-8"), "pasted policy"


@bp.route("/policies/impact", methods=("GET", "POST"))
@role_required("editor")
def impact():
    form = {"policy": "", "since": "7d"}
    if request.method == "GET":
        return render_template("impact/page.html", form=form, periods=PERIODS, result=None, diff=None, errors=[])
    form = {"policy": request.form.get("policy", "")[:MAX_FILE_BYTES], "since": request.form.get("since", "7d")[:20]}
    errors: list[str] = []
    try:
        since = parse_period(form["since"] or "7d")
        data, name = _draft()
        if not data.strip():
            raise InvalidInput("paste a policy file or choose one to upload")
        specs = parse_policy_text(data, name)
    except PolicyValidationError as exc:
        errors = list(exc.errors)
    except InvalidInput as exc:
        errors = [exc.message]
    if errors:
        return render_template("impact/page.html", form=form, periods=PERIODS, result=None, diff=None,
                               errors=errors[:50], more=max(0, len(errors) - 50)), 400
    service = current_app.extensions["vvg"].impact
    diff = service.diff(specs)
    result = service.analyse(specs, since)
    return render_template("impact/page.html", form=form, periods=PERIODS, result=result, diff=diff, errors=[],
                           shown=SHOWN, volumes=len(specs))
