"""/attachments: what is attached now and since when, lease expiry, and each volume's exposure over the
last day as a server-rendered SVG chart (no script), with exposed minutes per VM."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from flask import Blueprint, render_template

from dashboard.auth import role_required
from vvolguard.services.exposure import attached_now, exposure

bp = Blueprint("attachments", __name__)
WINDOW = timedelta(hours=24)
LABEL_W, CHART_W, ROW_H, TOP, BOTTOM = 150, 720, 24, 8, 28


def _aware(dt):
    return dt if dt is None or dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def chart(exp) -> dict:
    """Geometry of the exposure chart: one row per volume, one bar per attached interval."""
    span = (exp.end - exp.start).total_seconds()
    rows = []
    for i, v in enumerate(exp.volumes):
        y = TOP + i * ROW_H
        bars = []
        for iv in v.intervals:
            # at least 2 px wide, so a short attachment (or one that just began) is still seen
            w = max(2.0, iv.seconds / span * CHART_W)
            x = min(LABEL_W + (iv.start - exp.start).total_seconds() / span * CHART_W, LABEL_W + CHART_W - w)
            bars.append({"x": round(x, 1), "w": round(w, 1), "open": iv.open,
                         "title": f"{iv.start:%H:%M}–{'now' if iv.open else format(iv.end, '%H:%M')} UTC, "
                                  f"{iv.seconds / 60:.0f} min"})
        label = v.volume_id if len(v.volume_id) <= 18 else v.volume_id[:17] + "…"
        rows.append({"y": y, "label": label, "volume_id": v.volume_id, "vm": v.vm_id, "minutes": v.minutes,
                     "bars": bars})
    height = TOP + max(1, len(rows)) * ROW_H + BOTTOM
    ticks = []
    for h in range(0, 25, 3):
        t = exp.start + timedelta(hours=h)
        ticks.append({"x": round(LABEL_W + h / 24 * CHART_W, 1), "label": "now" if h == 24 else f"{t:%H:%M}"})
    return {"rows": rows, "width": LABEL_W + CHART_W + 10, "height": height, "axis_y": height - BOTTOM,
            "ticks": ticks, "label_w": LABEL_W, "chart_w": CHART_W, "row_h": ROW_H}


@bp.get("/attachments")
@role_required("viewer")
def attachments():
    """The attached volumes now, the last day's exposure chart and the per-VM totals."""
    now = datetime.now(timezone.utc)
    current = attached_now()
    exp = exposure(now, WINDOW, current=current)
    rows = []
    for p in current:
        lease = _aware(p.lease_expires_at)
        since = _aware(p.attached_at)
        rows.append({"p": p, "since": since, "lease": lease,
                     "lease_left_s": (lease - now).total_seconds() if lease else None,
                     "for_min": (now - since).total_seconds() / 60 if since else None})
    return render_template("attachments/index.html", rows=rows, exp=exp, chart=chart(exp), now=now,
                           vm_minutes=exp.vm_minutes())
