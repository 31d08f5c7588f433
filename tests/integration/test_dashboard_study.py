"""The study view in a real browser against embedded `normlab serve`: progress followed live,
effect cards with the API's numbers, per-cell mean ± CI curves equal to the curves endpoint,
and the results CSV."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.integration.browser import Watched, browser, watch
from tests.integration.conftest import SMALL, service_env, start_api

__all__ = ["browser"]
STUDY_WAIT_MS = 900_000  # six small runs one after another on a shared machine: a failure limit
SPEC = {
    "name": "dashboard-study", "seeds": 3,
    "base": {**SMALL, "training": {"epochs": 2, "batch_size": 64}},
    "factors": {"model.batch_norm.enabled": [False, True]},
    "response": {"metric": "final_test_accuracy"},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, str]]:
    tmp = tmp_path_factory.mktemp("dashboard-study")
    env = service_env(tmp, NORMLAB_DATABASE_URL=f"sqlite:///{tmp}/normlab.db")
    api, base = start_api(env, tmp)
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            yield client, base
    finally:
        api.stop()


@pytest.fixture
def web(browser: Browser, server: tuple[httpx.Client, str]) -> Iterator[Watched]:
    yield from watch(browser, server[1])


def test_study_view_shows_the_apis_numbers(
    server: tuple[httpx.Client, str], web: Watched
) -> None:
    client, _ = server
    response = client.post("/api/v1/studies", json=SPEC)
    assert response.status_code == 202, response.text
    study_id = response.json()["id"]
    page = web.page
    page.goto(f"{web.origin}/#/studies")
    page.locator(f"tr[data-id='{study_id}'] a").click()
    view = page.locator(f"#app[data-ready=true] .study[data-id='{study_id}']")
    expect(view).to_be_attached()
    # Followed live over the study's SSE stream until every member is terminal.
    expect(page.locator(".study[data-terminal=true]")).to_be_attached(timeout=STUDY_WAIT_MS)
    doc = client.get(f"/api/v1/studies/{study_id}").json()
    assert doc["progress"]["terminal"] and doc["contrasts"]
    expect(page.locator("#study-progress")).to_contain_text(
        f"{doc['progress']['finished']}/{doc['progress']['total']} finished")
    for contrast in doc["contrasts"]:
        card = page.locator(f".effect[data-factor='{contrast['factor']}']"
                            f"[data-level='{contrast['level']}']")
        for name in ("mean_diff", "mean_diff_ci", "p_better", "wilcoxon_p", "holm_p", "n_pairs",
                     "divergence"):
            value = card.locator(f"dd[data-stat={name}]").get_attribute("data-value")
            assert json.loads(value or "null") == contrast[name], name
        expect(card.locator(".verdict")).to_have_text(contrast["verdict"])
    drawn = page.evaluate("window.normlab.charts['study-curves']")
    assert drawn["points"] <= 2 * drawn["width"]
    curves = client.get(f"/api/v1/studies/{study_id}/curves",
                        params={"metric": "val_accuracy", "points": drawn["points"]}).json()
    assert len(drawn["data"]) == len(curves["cells"]) == 2
    for cols, cell in zip(drawn["data"], curves["cells"], strict=True):
        buckets = cell["buckets"]
        assert cols["x"] == [b["step_end"] for b in buckets]
        assert cols["mean"] == [b["mean"] for b in buckets]
        assert cols["min"] == [b["ci_low"] for b in buckets]
        assert cols["max"] == [b["ci_high"] for b in buckets]
    rows = page.locator("table.side tbody tr[data-cell]")
    expect(rows).to_have_count(len(doc["cells"]))
    web.screenshot("study")
    with page.expect_download() as info:
        page.locator("#results-csv").click()
    text = Path(info.value.path()).read_text()
    assert text.splitlines()[0].startswith("experiment_id,cell")
    assert len(text.splitlines()) == 1 + doc["n_members"]
