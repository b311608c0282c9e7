"""The page at `/`: served with all it loads and nothing from elsewhere; the sign-in that fits the env."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from core.settings import Settings
from tests.helpers import serve_app

PAGE = Path(__file__).parents[2] / "web" / "page"
ASSETS = sorted(p for p in (PAGE / "static").rglob("*") if p.is_file())
TEMPLATES = sorted(p for p in (PAGE / "templates").rglob("*") if p.is_file())
# An SVG's XML namespace is a name, never fetched.
NAMESPACES = {"http://www.w3.org/2000/svg"}
URL = re.compile(r"""(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s"'<>)]*""")


def linked(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)="(/assets/[^"]+)\"""", html)


async def test_the_page_is_served_at_the_root(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    html = response.text
    assert '<html lang="en">' in html
    assert 'name="viewport"' in html
    # In development: the form that picks a user and an organization, not the token field.
    assert 'id="dev-sign-in"' in html
    assert 'id="token-sign-in"' not in html
    # Live regions for what changes by itself.
    assert re.search(r'id="live"[^>]*aria-live="polite"', html)
    assert re.search(r'id="toasts"[^>]*aria-live="polite"', html)


async def test_the_page_allows_only_its_own_origin(client: httpx.AsyncClient) -> None:
    policy = (await client.get("/")).headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    for name in ("script-src", "style-src", "connect-src", "img-src"):
        assert directives[name] == "'self'", name
    assert directives["frame-ancestors"] == "'none'"


async def test_every_asset_the_page_loads_is_served(client: httpx.AsyncClient) -> None:
    html = (await client.get("/")).text
    wanted = set(linked(html))
    assert {"/assets/page.js", "/assets/page.css", "/assets/bell.svg"} <= wanted
    # The modules that page.js imports, and theirs.
    for script in [p for p in ASSETS if p.suffix == ".js"]:
        wanted |= {f"/assets/{name}" for name in re.findall(r"""from "\./([\w.-]+)";""", script.read_text())}
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for path in sorted(wanted):
        response = await client.get(path)
        assert response.status_code == 200, path
        kind = response.headers["content-type"].split(";")[0]
        # A module script with another type is refused by the browser.
        expected = types[Path(path).suffix]
        assert kind == expected or (expected == "text/javascript" and kind == "application/javascript"), path
        assert response.headers["cache-control"] == "no-cache"
    assert {f"/assets/{p.relative_to(PAGE / 'static')}" for p in ASSETS} == wanted, "an unused asset"


@pytest.mark.parametrize("path", ASSETS + TEMPLATES, ids=lambda p: p.name)
def test_nothing_is_fetched_from_elsewhere(path: Path) -> None:
    found = set(URL.findall(path.read_text())) - NAMESPACES
    assert not found, f"{path.name} names other origins: {found}"


async def test_files_beside_the_assets_are_not_served(client: httpx.AsyncClient) -> None:
    for path in ("/assets/../routes.py", "/assets/%2e%2e/routes.py", "/assets/nope.js", "/static/page.js"):
        assert (await client.get(path)).status_code == 404, path


async def test_the_page_is_not_in_the_api_document(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/" not in paths
    assert not [p for p in paths if p.startswith(("/static", "/assets"))]


async def test_outside_development_the_page_asks_for_the_crms_token(settings: Settings) -> None:
    production = settings.model_copy(update={"env": "production"})
    async with serve_app(production) as (url, _), httpx.AsyncClient(base_url=url) as client:
        html = (await client.get("/")).text
    assert 'id="token-sign-in"' in html
    assert 'type="password"' in html
    assert 'id="dev-sign-in"' not in html
