"""The dashboard on a server with API keys: the page asks for a key once per tab, keeps it in
sessionStorage, sends it as a Bearer header (the live stream too), and asks again after a 401."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.integration.browser import browser, watch
from tests.integration.conftest import SMALL, service_env, start_api
from tests.integration.test_dashboard import submit

__all__ = ["browser"]
ADMIN_KEY = "nlk_dashboard-test-admin-key-0123456789abcdef"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, str]]:
    tmp = tmp_path_factory.mktemp("keyed")
    env = service_env(tmp, NORMLAB_DATABASE_URL=f"sqlite:///{tmp}/normlab.db",
                      NORMLAB_BOOTSTRAP_ADMIN_KEY=ADMIN_KEY)
    api, base = start_api(env, tmp)
    try:
        with httpx.Client(base_url=base, timeout=30,
                          headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
            yield client, base
    finally:
        api.stop()


def test_a_keyed_server_asks_for_the_key_once(
    keyed: tuple[httpx.Client, str], browser: Browser
) -> None:
    client, base = keyed
    experiment = submit(client, {**SMALL, "tags": ["keyed"],
                                 "training": {"epochs": 1000, "batch_size": 16}})
    for web in watch(browser, base):
        web.expected_statuses.add(401)  # the answers that make the page ask
        page = web.page
        page.goto(f"{base}/#/")
        dialog = page.locator("#key-dialog")
        expect(dialog).to_be_visible()
        page.locator("#key-input").fill("nlk_this-is-not-a-valid-key-000000000000")
        page.locator("#key-submit").click()
        expect(page.locator("#key-reason")).to_contain_text("refused")  # a 401 asks again
        page.locator("#key-input").fill(ADMIN_KEY)
        page.locator("#key-submit").click()
        expect(page.locator(f"#app[data-ready=true] tr[data-id='{experiment['id']}']")
               ).to_be_visible()
        # Once per tab: another view, and the live stream (fetch() with the header), need no
        # new prompt.
        page.goto(f"{base}/#/e/{experiment['id']}")
        expect(page.locator(".experiment")).to_have_attribute("data-events", re.compile("^[1-9]"))
        expect(dialog).to_be_hidden()
        page.locator("#cancel").click()
        expect(page.locator(".exp-head .status")).to_have_text("cancelled")
        assert page.evaluate("sessionStorage.getItem('normlab.apiKey')") == ADMIN_KEY
        assert page.evaluate("localStorage.length") == 0
        assert not [u for u in web.urls if ADMIN_KEY in u]
