"""/attachments: what is attached now and since when, lease expiry, and each volume's exposure over the
last day as a server-rendered SVG chart (no script), with exposed minutes per VM."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from flask import Blueprint, render_template, request

from dashboard.auth import role_required
from vvolguard.services.exposure import attached_now, exposure

bp = Blueprint("attachments", __name__)
WINDOW = timedelta(hours=24)
# ?window=: the chart's span, and its ticks (on round times) and their labels
WINDOWS = {
    "1h": (timedelta(hours=1), timedelta(minutes=10), "%H:%M", "last hour"),
    "24h": (timedelta(hours=24), timedelta(hours=3), "%H:%M", "last 24 hours"),
    "7d": (timedelta(days=7), timedelta(days=1), "%a %d", "last 7 days"),
}
DEFAULT_WINDOW = "24h"
LABEL_W, CHART_W, ROW_H, TOP, BOTTOM = 150, 720, 24, 8, 28


def _aware(dt):
    return dt if dt is None or dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def round_ticks(start: datetime, end: datetime, step: timedelta) -> list[datetime]:
    """Every multiple of ``step`` (counted from midnight UTC) inside [start, end]."""
    midnight = start.replace(hour=0, minute=0, second=0, microsecond=0)
    n = -(-(start - midnight) // step)  # ceil: the first round time at or after start
    t, out = midnight + n * step, []
    while t <= end:
        out.append(t)
        t += step
    return out


def chart(exp, window: str = DEFAULT_WINDOW) -> dict:
    """Geometry of the exposure chart: one row per volume, one bar per attached interval (its part past
    the lease drawn apart), ticks on round times."""
    span = (exp.end - exp.start).total_seconds()
    _, step, fmt, _ = WINDOWS.get(window, WINDOWS[DEFAULT_WINDOW])

    def x_of(t: datetime) -> float:
        return LABEL_W + (t - exp.start).total_seconds() / span * CHART_W

    tfmt = "%a %d %H:%M" if window == "7d" else "%H:%M"
    rows = []
    for i, v in enumerate(exp.volumes):
        y = TOP + i * ROW_H
        bars = []
        for iv in v.intervals:
            # at least 2 px wide, so a short attachment (or one that just began) is still seen
            w = max(2.0, iv.seconds / span * CHART_W)
            x = min(x_of(iv.start), LABEL_W + CHART_W - w)
            over = iv.overrun_seconds
            title = (f"{iv.start:{tfmt}}–{'now' if iv.open else format(iv.end, tfmt)} UTC, {iv.seconds / 60:.0f} min"
                     + (f", {over / 60:.0f} min past its lease" if over >= 1 else ""))
            bars.append({"x": round(x, 1), "w": round(w, 1), "open": iv.open, "title": title})
            if over >= 1:
                ow = max(2.0, over / span * CHART_W)
                bars.append({"x": round(min(x_of(iv.end) - ow, LABEL_W + CHART_W - ow), 1), "w": round(ow, 1),
                             "open": iv.open, "over": True, "title": title})
        label = v.volume_id if len(v.volume_id) <= 18 else v.volume_id[:17] + "…"
        rows.append({"y": y, "label": label, "volume_id": v.volume_id, "vm": v.vm_id, "minutes": v.minutes,
                     "bars": bars})
    height = TOP + max(1, len(rows)) * ROW_H + BOTTOM
    ticks = [{"x": round(x_of(t), 1), "label": t.strftime(fmt)} for t in round_ticks(exp.start, exp.end, step)]
    # "now" at the right edge, unless a round tick is too close to it to leave room
    if not ticks or x_of(exp.end) - ticks[-1]["x"] > 40:
        ticks.append({"x": round(x_of(exp.end), 1), "label": "now"})
    else:
        ticks[-1] = {"x": ticks[-1]["x"], "label": "now"} if x_of(exp.end) - ticks[-1]["x"] < 1 else ticks[-1]
    return {"rows": rows, "width": LABEL_W + CHART_W + 10, "height": height, "axis_y": height - BOTTOM,
            "ticks": ticks, "label_w": LABEL_W, "chart_w": CHART_W, "row_h": ROW_H}


@bp.get("/attachments")
@role_required("viewer")
def attachments():
    """The attached volumes now, the last day's exposure chart and the per-VM totals."""
    now = datetime.now(timezone.utc)
    window = request.args.get("window", DEFAULT_WINDOW)
    window = window if window in WINDOWS else DEFAULT_WINDOW
    current = attached_now()
    exp = exposure(now, WINDOWS[window][0], current=current)
    rows = []
    for p in current:
        lease = _aware(p.lease_expires_at)
        since = _aware(p.attached_at)
        rows.append({"p": p, "since": since, "lease": lease,
                     "lease_left_s": (lease - now).total_seconds() if lease else None,
                     "for_min": (now - since).total_seconds() / 60 if since else None})
    overruns = sum(1 for v in exp.volumes for iv in v.intervals if iv.overrun_seconds >= 1)
    return render_template("attachments/index.html", rows=rows, exp=exp, chart=chart(exp, window), now=now,
                           vm_minutes=exp.vm_minutes(), window=window, windows=WINDOWS, overruns=overruns)
