"""The usage panel of the web UI's Queues page in a real browser (Debian's Chromium, headless, driven
by Playwright) against `yard up`: a job that ran is costed at the admin's prices, grouped as the reader
picks, and a team over its monthly budget shows a full bar that says its new jobs wait."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from playwright.sync_api import Browser, expect

# The `yard up` instance, the browser and the screenshot folder of the web UI tests (module fixtures:
# this module gets instances of its own).
from tests.e2e.test_web_ui import Up, browser, logged_in, shots, up  # noqa: F401
from tests.harness import wait_for


def test_usage_panel_shows_cost_by_group_and_a_team_over_its_budget(
    browser: Browser,  # noqa: F811
    up: Up,  # noqa: F811
    shots: Path,  # noqa: F811
) -> None:
    r = up.api.put("/v1/admin/prices", json={"cpu_hour": "3600", "spot_discount": "50%"})
    assert r.status_code == 200, r.text
    code = "import time; time.sleep(1)"
    job = up.api.post(
        "/v1/jobs",
        json={
            "name": "costly",
            "command": [sys.executable, "-c", code],
            "resources": {"cpu": 0.1, "memory": "32Mi"},
        },
    ).json()
    assert up.wait(job["id"], {"SUCCEEDED"}, 60)
    team = job["team"]
    r = up.api.put(f"/v1/admin/teams/{team}", json={"monthly_budget": "0.01/month"})
    assert r.status_code == 200, r.text
    # The panel reads what the API says: wait until the report has the attempt.
    wait_for(lambda: up.api.get("/v1/usage").json()["total"]["attempts"] >= 1, 30, 0.1, "the attempt's cost")

    page = logged_in(browser, up)
    page.goto(f"{up.url}/#/queues")
    panel = page.get_by_test_id("usage-panel")
    expect(panel).to_be_visible()
    rows = page.get_by_test_id("usage-rows")
    expect(rows.locator("tr", has_text=team).first).to_be_visible()
    expect(rows.locator("tr.total")).to_contain_text("total")
    cost = rows.locator("tr", has_text=team).first.get_by_test_id("usage-cost")
    expect(cost).to_have_text(re.compile(r"^\$\d+\.\d\d$"))
    budget = page.locator(f"[data-testid=budget][data-team='{team}']")
    expect(budget).to_have_attribute("data-level", "over")
    expect(budget).to_contain_text("new jobs wait")
    expect(budget).to_contain_text("of $0.01")

    # Grouped by user instead: the header and the rows follow the choice.
    page.get_by_test_id("usage-by").select_option("user")
    expect(page.get_by_test_id("usage-table").locator("thead")).to_contain_text("User")
    expect(rows.locator("tr", has_text="admin").first).to_be_visible()
    page.screenshot(path=str(shots / "usage-panel.png"), full_page=True)
    expect(panel.locator("p.error")).to_be_hidden()
    page.context.close()
