"""The page recruiters work in: one server-rendered template, and the script and style it loads.

Nothing comes from elsewhere: no build step, no CDN. The page talks to the API like any client, with
the session cookie, and to the stream with an EventSource.
"""

from __future__ import annotations

from pathlib import Path

from quart import Blueprint, Response, render_template, send_from_directory
from quart_schema import hide

from web.resources import resources

STATIC = Path(__file__).parent / "static"

blueprint = Blueprint("page", __name__, template_folder="templates")

# The page loads only what this app serves; a script injected into it could reach nothing else.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)


@blueprint.get("/")
@hide
async def index() -> Response:
    """The page: sign in, my tasks, the bell and its notifications, live."""
    settings = resources().settings
    page = await render_template(
        "page/index.html", dev=settings.env == "dev", undo_seconds=settings.undo_window_seconds
    )
    return Response(page, content_type="text/html; charset=utf-8")


@blueprint.get("/assets/<path:filename>")
@hide
async def asset(filename: str) -> Response:
    # Not a static folder of the blueprint: its route would show up in the OpenAPI document, and the
    # app's own /static route (web/static, which does not exist) would shadow it.
    response = await send_from_directory(STATIC, filename)
    # Revalidated on every load (cheap: a 304), so a deploy never leaves a stale script in a tab.
    response.headers["Cache-Control"] = "no-cache"
    return response


@blueprint.after_request
async def security_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
