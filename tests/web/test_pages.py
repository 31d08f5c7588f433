"""The dashboard and /docs pages: local assets only, a CSP without inline scripts, a favicon."""

from __future__ import annotations

import gzip
import re

from fastapi.testclient import TestClient

from app.web.pages import STATIC
from worker.training.config import ExperimentConfig

BUDGET_GZIP_BYTES = 300 * 1024
ASSET = re.compile(r"""(?:src|href)="([^"]+)\"""")


def _check_page(client: TestClient, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'self'" in csp
    assert "unsafe-inline" not in csp and "http" not in csp
    html = response.text
    # Every script is a file of this origin: no inline code.
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    for asset in ASSET.findall(html):
        if asset.startswith("#"):
            continue
        assert asset.startswith("/"), asset
        assert client.get(asset).status_code == 200, asset
    return html


def test_dashboard_page_loads_only_local_assets(client: TestClient) -> None:
    html = _check_page(client, "/")
    assert "/static/vendor/uplot/uPlot.iife.min.js" in html


def test_docs_offline_with_its_own_init_script(client: TestClient) -> None:
    html = _check_page(client, "/docs")
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in html
    init = client.get("/static/docs-init.js").text
    assert "validatorUrl: null" in init  # else Swagger UI calls validator.swagger.io
    assert client.get("/redoc").status_code == 404  # dropped rather than loaded from a CDN


def test_favicon(client: TestClient) -> None:
    response = client.get("/favicon.ico")
    assert response.status_code == 200 and response.headers["content-type"] == "image/svg+xml"


def test_static_files_are_not_a_path_traversal(client: TestClient) -> None:
    assert client.get("/static/../pages.py").status_code == 404
    assert client.get("/static/%2e%2e/pages.py").status_code == 404


def test_vendored_files_carry_their_licenses() -> None:
    assert "MIT" in (STATIC / "vendor/uplot/LICENSE").read_text()
    assert "Apache License" in (STATIC / "vendor/swagger-ui/LICENSE").read_text()


def test_dashboard_scripts_and_styles_fit_the_budget() -> None:
    files = [p for p in STATIC.rglob("*") if p.suffix in (".js", ".css")
             and "swagger-ui" not in p.parts and p.name != "docs-init.js"]
    total = sum(len(gzip.compress(p.read_bytes())) for p in files)
    assert any(p.name == "uPlot.iife.min.js" for p in files)
    assert total < BUDGET_GZIP_BYTES, total


def test_config_defaults_are_the_models(client: TestClient) -> None:
    response = client.get("/api/v1/config/defaults")
    assert response.status_code == 200
    assert response.json() == ExperimentConfig().model_dump(mode="json")


def test_no_source_maps_referenced() -> None:
    # The maps are not shipped; a reference would make browsers request a missing file.
    for path in STATIC.rglob("*"):
        if path.suffix in (".js", ".css"):
            assert "sourceMappingURL" not in path.read_text(errors="replace"), path
