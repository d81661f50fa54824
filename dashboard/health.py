"""/healthz: the dashboard is up."""
from flask import Blueprint

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """200 for anyone."""
    return {"status": "ok"}
