"""The web UI's jobs page at scale, in a real browser (Debian's Chromium, as in test_web_ui.py): keyset
pages that never count every job ("1-50 of many" with an en dash), a new job reaching the first page while other
jobs' events stream in without pause, and an archived job's page."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from tests.e2e.test_web_ui import launch
from tests.harness import ControlPlane, wait_for

pytestmark = pytest.mark.e2e
NOWHERE = {"command": ["true"], "pool": "nowhere", "resources": {"cpu": 0.1, "memory": "32Mi"}}


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("webjobs") / "home").start()
    yield plane
    plane.stop()


@pytest.fixture(scope="module")
def browser(cp: ControlPlane) -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = launch(pw)
        try:
            yield b
        finally:
            b.close()


def submit(c: httpx.Client, name: str) -> str:
    r = c.post("/v1/jobs", json={**NOWHERE, "name": name})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_pages_say_of_many_and_a_new_job_arrives_while_events_stream(
    browser: Browser, cp: ControlPlane
) -> None:
    with cp.client() as api:
        old = [submit(api, f"old-{i}") for i in range(60)]
        page = browser.new_context().new_page()
        page.goto(f"{cp.url}/?token={cp.token}#/jobs")
        expect(page.locator("tr[data-job]")).to_have_count(50)
        expect(page.locator(".pager")).to_contain_text("1–50 of many")
        page.click("[data-testid=page-older]")
        expect(page.locator(".pager")).to_contain_text("51–60 of 60")
        page.click("[data-testid=page-newer]")
        expect(page.locator(".pager")).to_contain_text("1–50 of many")

        # Jobs on the second page change state every 50 ms (as thousands of running jobs would):
        # their events must not reload the first page, which must still take in a new job.
        page.evaluate(
            """() => {
            window.__lists = 0;
            const real = window.fetch;
            window.fetch = (url, ...rest) => {
              if (String(url).includes('/v1/jobs?')) window.__lists++;
              return real(url, ...rest);
            };
        }"""
        )
        stop = threading.Event()
        changes = [0]

        def churn() -> None:
            with cp.client() as c:
                while not stop.is_set():
                    for job_id in old[:5]:
                        c.delete(f"/v1/jobs/{job_id}")
                        c.post(f"/v1/jobs/{job_id}/restart")
                        changes[0] += 2
                        if stop.wait(0.05):
                            return

        t = threading.Thread(target=churn, daemon=True)
        t.start()
        try:
            t0 = time.monotonic()
            wait_for(lambda: changes[0] >= 80, 120, 0.1, "80 state changes of other jobs")
            # Only the page's own refresh of waiting jobs' queue places (every 10 s) reloads it.
            assert page.evaluate("window.__lists") <= 1 + (time.monotonic() - t0) // 10
            new = submit(api, "arrives")
            expect(page.locator(f"tr[data-job='{new}']")).to_be_visible(timeout=15_000)
        finally:
            stop.set()
            t.join(10)
        page.context.close()


def test_an_archived_jobs_page_says_so_and_offers_no_restart(browser: Browser, cp: ControlPlane) -> None:
    with cp.client() as api:
        job_id = submit(api, "to-archive")
        assert api.delete(f"/v1/jobs/{job_id}").json()["status"] == "CANCELLED"
        assert api.post("/v1/admin/prune", json={"before": "0s"}).json()["jobs"] >= 1
        page = browser.new_context().new_page()
        page.goto(f"{cp.url}/?token={cp.token}#/job/{job_id}")
        expect(page.locator("[data-testid=archived]")).to_be_visible()
        expect(page.locator("[data-testid=job-status]")).to_contain_text("CANCELLED")
        expect(page.locator("[data-testid=restart]")).to_have_count(0)
        page.context.close()
