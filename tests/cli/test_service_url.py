"""The URL `normlab serve` tells the user to open."""

from __future__ import annotations

from app.cli.service import dashboard_url


def test_dashboard_url_names_a_reachable_address() -> None:
    assert dashboard_url("127.0.0.1", 8000) == "http://127.0.0.1:8000/"
    assert dashboard_url("0.0.0.0", 8080) == "http://127.0.0.1:8080/"
    assert dashboard_url("::", 8000) == "http://[::1]:8000/"
    assert dashboard_url("localhost", 9000) == "http://localhost:9000/"
