"""The dashboard in a real browser against a real `normlab serve` (embedded: SQLite and its own
worker process). Every page must finish with zero console errors and zero outside requests."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.integration.browser import WAIT_MS, Watched, browser, watch
from tests.integration.conftest import SMALL, TERMINAL, service_env, start_api, wait_status

__all__ = ["browser"]
DIVERGING = {**SMALL, "optimizer": {"learning_rate": 10.0},
             "model": {"hidden_layers": [64, 32], "batch_norm": {"enabled": False}}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, str]]:
    tmp = tmp_path_factory.mktemp("dashboard")
    env = service_env(tmp, NORMLAB_DATABASE_URL=f"sqlite:///{tmp}/normlab.db",
                      NORMLAB_STREAM_POLL_S="0.2")
    api, base = start_api(env, tmp)
    try:
        # `serve` tells the user where to point the browser.
        assert f"open {base}/ " in (tmp / "api.log").read_text()
        with httpx.Client(base_url=base, timeout=30) as client:
            yield client, base
    finally:
        api.stop()


@pytest.fixture
def web(browser: Browser, server: tuple[httpx.Client, str]) -> Iterator[Watched]:
    yield from watch(browser, server[1])


def submit(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/api/v1/experiments", json=body)
    assert response.status_code == 202, response.text
    result: dict[str, Any] = response.json()
    return result


def open_experiment(web: Watched, experiment_id: str) -> None:
    web.page.goto(f"{web.origin}/#/e/{experiment_id}")
    expect(web.page.locator(f"#app[data-ready=true] .experiment[data-id='{experiment_id}']")
           ).to_be_attached()


def charts(web: Watched) -> dict[str, Any]:
    found: dict[str, Any] = web.page.evaluate("window.normlab.charts")
    return found


def assert_equals_series(client: httpx.Client, experiment_id: str, chart: dict[str, Any]) -> None:
    """What a chart draws is what the series endpoint answers for the same request."""
    assert chart["points"] <= 2 * chart["width"]
    for name, drawn in chart["data"].items():
        params: dict[str, Any] = {"points": chart["points"]}
        if chart["from"] is not None:
            params |= {"from_step": chart["from"], "to_step": chart["to"]}
        buckets = client.get(f"/api/v1/experiments/{experiment_id}/metrics/{name}/series",
                             params=params).json()["buckets"]
        assert buckets, name
        assert drawn["x"] == [b["step_end"] for b in buckets], name
        for column in ("mean", "min", "max"):
            assert drawn[column] == [b[column] for b in buckets], (name, column)


def test_list_and_experiment_charts_equal_the_series(
    server: tuple[httpx.Client, str], web: Watched
) -> None:
    client, _ = server
    experiment = submit(client, {**SMALL, "preset": "geron-bn", "tags": ["browser"]})
    page = web.page
    page.goto(f"{web.origin}/#/")
    row = page.locator(f"tr[data-id='{experiment['id']}']")
    expect(row).to_be_visible()
    expect(row.locator(".status")).to_have_text("succeeded", timeout=WAIT_MS)  # live status
    expect(row).to_contain_text("browser")
    row.get_by_role("link", name=experiment["name"]).click()
    expect(page.locator(".experiment[data-final=true]")).to_be_attached()
    drawn = charts(web)
    assert {"loss", "accuracy", "grad_norm", "clip_fraction", "grad_layers", "bn_mean", "bn_var",
            "act/hidden1"} <= set(drawn)
    for chart in drawn.values():
        assert_equals_series(client, experiment["id"], chart)
    web.screenshot("experiment")
    # The checkpoint comes through fetch() (the key, when there is one, is a header, never a URL).
    with page.expect_download() as info:
        page.locator("#download").click()
    assert info.value.suggested_filename.endswith(f"{experiment['id']}.safetensors")
    assert Path(info.value.path()).stat().st_size > 1000

    # Zoom: drag across the loss chart; the charts re-fetch finer buckets for that range.
    loss = page.locator(".chart[data-chart=loss]")
    before = loss.get_attribute("data-loads")
    box = loss.locator(".u-over").bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.3, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, y, steps=5)
    page.mouse.up()
    expect(loss).not_to_have_attribute("data-loads", before or "")
    expect(page.locator("#reset-zoom")).to_be_enabled()
    zoomed = charts(web)["loss"]
    assert zoomed["from"] is not None and zoomed["from"] < zoomed["to"]
    assert_equals_series(client, experiment["id"], zoomed)
    assert re.search(r"from=\d+&to=\d+", page.url)
    # The range is in the URL: a fresh page opened on it draws the same range, and log scale.
    page.locator("#log-scale").check()
    expect(page).to_have_url(re.compile(r"log=1"))
    shared = page.url
    page.goto("about:blank")
    page.goto(shared)
    expect(page.locator(".experiment[data-final=true]")).to_be_attached()
    again = charts(web)["loss"]
    assert (again["from"], again["to"], again["log"]) == (zoomed["from"], zoomed["to"], True)


def test_a_live_point_arrives_and_cancel_stops_the_run(
    server: tuple[httpx.Client, str], web: Watched
) -> None:
    client, _ = server
    experiment = submit(client, {**SMALL, "training": {"epochs": 1000, "batch_size": 16}})
    open_experiment(web, experiment["id"])
    loss = web.page.locator(".chart[data-chart=loss]")
    expect(loss).to_have_attribute("data-last-step", re.compile(r"^\d+$"))  # first points drawn
    first = loss.get_attribute("data-last-step")
    expect(loss).not_to_have_attribute("data-last-step", first or "")  # a later one, pushed live
    assert int(web.page.locator(".experiment").get_attribute("data-events") or 0) > 0
    web.screenshot("experiment-live")
    web.page.locator("#cancel").click()
    expect(web.page.locator(".exp-head .status")).to_have_text("cancelled")
    assert client.get(f"/api/v1/experiments/{experiment['id']}").json()["status"] == "cancelled"


def test_a_diverging_run_shows_its_marker_and_annotation(
    server: tuple[httpx.Client, str], web: Watched
) -> None:
    client, _ = server
    experiment = submit(client, DIVERGING)
    done = wait_status(client, experiment["id"], TERMINAL)
    assert done["status"] == "diverged", done
    step = done["summary"]["diverged_at_step"]
    open_experiment(web, experiment["id"])
    expect(web.page.locator(".experiment[data-final=true]")).to_be_attached()
    annotation = web.page.locator(".annotation")
    expect(annotation).to_contain_text(f"diverged at step {step}")
    metric = done["summary"]["diverged_metric"]
    expect(annotation).to_contain_text(re.compile(rf"{metric} = (NaN|-?Infinity)"))
    loss = charts(web)["loss"]
    assert any(m["x"] >= step for m in loss["markers"]), loss["markers"]
    assert int(web.page.locator(".chart[data-chart=loss]").get_attribute("data-markers") or 0) > 0
    web.screenshot("diverged")


def _label(diff: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v, separators=(',', ':'))}"
                     for k, v in diff.items() if k != "name")


def test_compare_labels_are_the_config_differences(
    server: tuple[httpx.Client, str], web: Watched
) -> None:
    client, _ = server
    runs = [submit(client, body) for body in (
        SMALL,
        {**SMALL, "optimizer": {"learning_rate": 0.05}},
        {**SMALL, "model": {"hidden_layers": [64, 32], "activation": "relu"}},
    )]
    for run in runs:
        wait_status(client, run["id"], TERMINAL)
    page = web.page
    page.goto(f"{web.origin}/#/")
    for run in runs:
        page.locator(f"tr[data-id='{run['id']}'] input[type=checkbox]").check()
    web.screenshot("list")  # the runs of the earlier tests too, three of them selected
    page.locator("#compare-selected").click()
    expect(page.locator("#app[data-ready=true] .compare .chart[data-chart=loss]")).to_be_attached()
    ids = ",".join(r["id"] for r in runs)
    assert f"ids={ids}" in page.url
    answer = client.get("/api/v1/compare", params={"ids": ids, "names": "loss"}).json()
    expected = [f"{answer['experiments'][0]['name']} (reference)"] + [
        _label(e["config_diff"]) for e in answer["experiments"][1:]]
    labels = page.locator(".chart[data-chart=loss] .legend-label").all_text_contents()
    assert labels == expected
    assert "optimizer.learning_rate=0.05" in labels[1] and 'model.activation="relu"' in labels[2]
    assert page.locator("table.side td[data-field=final_test_accuracy]").count() == 3
    web.screenshot("compare")


def test_submit_form_shows_field_errors_then_submits(
    server: tuple[httpx.Client, str], web: Watched
) -> None:
    web.expected_statuses.add(422)
    page = web.page
    page.goto(f"{web.origin}/#/new")
    expect(page.locator("#app[data-ready=true] #submit-form")).to_be_visible()
    page.locator("#preset").select_option("geron-bn")
    expect(page.locator("#f-name")).to_have_value("geron-bn")
    page.locator("#f-dataset\\.name").select_option("digits")
    page.locator("#f-training\\.epochs").fill("1")
    page.locator("#f-optimizer\\.learning_rate").fill("0")
    page.locator("#f-tags").fill("form")
    page.locator("#submit").click()
    error = page.locator(".field-error[data-field='optimizer.learning_rate']")
    expect(error).to_contain_text("greater than 0")
    expect(page.locator("#f-optimizer\\.learning_rate")).to_have_attribute("aria-invalid", "true")
    web.screenshot("submit-errors")
    page.locator("#f-optimizer\\.learning_rate").fill("0.1")
    page.locator("#submit").click()
    expect(page).to_have_url(re.compile(r"#/e/[0-9a-f-]{36}$"))
    experiment_id = page.url.rsplit("/", 1)[1]
    expect(page.locator(f".experiment[data-id='{experiment_id}']")).to_be_attached()
    stored = server[0].get(f"/api/v1/experiments/{experiment_id}").json()
    assert stored["tags"] == ["form"] and stored["config"]["training"]["epochs"] == 1
    assert stored["config"]["optimizer"]["learning_rate"] == 0.1


def test_list_filters_and_pages_by_cursor(
    server: tuple[httpx.Client, str], web: Watched
) -> None:
    client, _ = server
    ids = [submit(client, {**SMALL, "tags": ["paging"]})["id"] for _ in range(3)]
    page = web.page
    page.goto(f"{web.origin}/#/")
    expect(page.locator("#app[data-ready=true] #filters")).to_be_visible()
    page.locator("#filter-tag").fill("paging")
    page.locator("#filters button[type=submit]").click()
    expect(page).to_have_url(re.compile(r"tag=paging"))
    rows = page.locator("table.runs tbody tr[data-id]")
    expect(rows).to_have_count(3)
    page.goto(f"{web.origin}/#/?tag=paging&limit=2")
    expect(rows).to_have_count(2)
    first = [rows.nth(i).get_attribute("data-id") for i in range(2)]
    page.locator("#next-page").click()
    expect(rows).to_have_count(1)
    rest = [rows.nth(0).get_attribute("data-id")]
    assert first + rest == ids[::-1]  # newest first, each run once
    api = client.get("/api/v1/experiments", params={"tag": "paging", "limit": 2}).json()
    assert [e["id"] for e in api["items"]] == first and api["next_cursor"] in page.url


def test_docs_render_offline(web: Watched) -> None:
    web.page.goto(f"{web.origin}/docs")
    expect(web.page.locator(".swagger-ui .info .title")).to_contain_text("NormLab")
    expect(web.page.locator(".opblock").first).to_be_visible()
    assert web.page.locator(".opblock").count() >= 10
    web.screenshot("docs")
