"""The web UI in a real browser: Debian's Chromium, headless, driven by Playwright, against `yard up`.

Nothing here downloads a browser: Playwright launches /usr/bin/chromium (`make install` puts it there).
Without it the tests fail rather than skip, so a CI image that lost the browser is noticed.

Screenshots of each page go to $TRAINYARD_SCREENSHOT_DIR when it is set (docs/screenshots for the
README), else to the test's temp directory.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from tests.harness import REPO, free_port, wait_for

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
]

# A small training job, typed into the form as one shell-quoted line (the worker may run jobs with a
# private /tmp, so no script file): streams log lines (ANSI green), logs a loss curve through
# trainyard.job.log_metric, and leaves an artifact.
JOB_CODE = (
    "import time, trainyard.job as tj; "
    '[(print(f"\\x1b[32mstep {s}\\x1b[0m loss={2 / s:.3f}", flush=True), tj.log_metric("loss", 2 / s, s), '
    "time.sleep(0.25)) for s in range(1, 13)]; "
    '(tj.artifact_dir() / "result.txt").write_text("final loss 0.1667\\n"); '
    'print("training done", flush=True)'
)


def launch(pw: Playwright) -> Browser:
    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: install Debian's chromium (make install does it; "
        "apt-get install -y --no-install-recommends chromium)"
    )
    return pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)


class Up:
    def __init__(self, home: Path, proc: subprocess.Popen[str], url: str, link: str) -> None:
        self.home = home
        self.proc = proc
        self.url = url
        self.link = link
        self.token = (home / "token").read_text().strip()
        self.api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

    def job(self, job_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self.api.get(f"/v1/jobs/{job_id}").json()
        return data

    def wait(self, job_id: str, statuses: set[str], timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in statuses:
                return job
            if time.monotonic() > deadline:
                workers = self.api.get("/v1/workers").json()
                raise AssertionError(
                    f"{job_id} not in {statuses} after {timeout}s: {job}\nworkers: {workers}"
                )
            time.sleep(0.05)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    home = tmp_path_factory.mktemp("webui") / "home"
    port, grpc_port = free_port(), free_port()
    # One worker with 2 CPUs: a 2-CPU job fills it, so the next job provably waits in PENDING.
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "trainyard", "up"),
            *("--home", str(home), "--port", str(port), "--grpc-port", str(grpc_port)),
            *("--workers", "1", "--worker-cpus", "2", "--worker-memory", "4Gi"),
            *("--heartbeat-interval", "0.3", "--cancel-grace", "2"),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    banner = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        banner.append(line)
        if line.startswith("Press Ctrl-C"):
            break
    text = "".join(banner)
    m = re.search(r"web UI\s+(http://\S+/\?token=\S+)", text)
    assert m, f"`yard up` printed no web UI link:\n{text}"
    u = Up(home, proc, f"http://127.0.0.1:{port}", m.group(1))
    wait_for(lambda: len(u.api.get("/v1/workers").json()["workers"]) == 1, 30, 0.1, "the worker")
    try:
        yield u
    finally:
        u.api.close()
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def browser(up: Up) -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = launch(pw)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = Path(os.environ.get("TRAINYARD_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshots"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def logged_in(browser: Browser, up: Up) -> Page:
    page = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True).new_page()
    page.goto(up.link)
    expect(page.locator("#nav")).to_be_visible()
    return page


def test_login_with_link_strips_token_and_form_login(browser: Browser, up: Up) -> None:
    page = logged_in(browser, up)
    expect(page).not_to_have_url(re.compile("token"))  # stored, and gone from the address bar and history
    assert page.evaluate("localStorage.getItem('trainyard.token')") == up.token
    page.reload()  # the stored token survives a reload
    expect(page.locator("#nav")).to_be_visible()
    page.click("#logout")
    expect(page.locator("#login")).to_be_visible()
    page.fill("#login-token", "not-a-token")
    page.click("#login-form button")
    expect(page.locator("#login-error")).to_contain_text("not valid")
    page.fill("#login-token", up.token)
    page.click("#login-form button")
    expect(page.locator("h1", has_text="Jobs")).to_be_visible()
    page.context.close()


def test_submit_watch_live_logs_chart_artifact_and_cancel(browser: Browser, up: Up, shots: Path) -> None:
    blocker = up.api.post(
        "/v1/jobs",
        json={"name": "blocker", "command": ["sleep", "120"], "resources": {"cpu": 2, "memory": "256Mi"}},
    ).json()["id"]
    up.wait(blocker, {"RUNNING"})

    # The watcher tab keeps the jobs table open and records every status each row ever shows.
    watcher = logged_in(browser, up)
    watcher.goto(f"{up.url}/#/jobs")
    expect(watcher.locator(f"tr[data-job='{blocker}']")).to_be_visible()
    watcher.evaluate(
        """() => {
        window.__noReload = true;
        window.__seen = {};
        const note = () => {
          for (const tr of document.querySelectorAll('tr[data-job]')) {
            const s = tr.querySelector('td.status').textContent;
            const seen = (window.__seen[tr.dataset.job] ||= []);
            if (seen[seen.length - 1] !== s) seen.push(s);
          }
        };
        new MutationObserver(note).observe(document.querySelector('[data-testid=jobs-body]'),
          {childList: true, subtree: true, characterData: true});
        note();
    }"""
    )

    page = logged_in(browser, up)
    page.goto(f"{up.url}/#/submit")
    page.fill("[data-testid=spec-name]", "ui-train")
    page.fill("[data-testid=spec-command]", f"{sys.executable} -c '{JOB_CODE}'")
    page.fill("[data-testid=spec-cpu]", "1")
    page.fill("[data-testid=spec-memory]", "512Mi")
    page.fill("[data-testid=spec-env]", "LR=0.1")
    page.screenshot(path=str(shots / "submit.png"), full_page=True)
    page.click("[data-testid=submit]")
    page.wait_for_url(re.compile(r"#/job/j"))
    job_id = page.url.rsplit("/", 1)[1]
    # It waits behind the blocker: PENDING, with the scheduler's reason.
    expect(page.locator("[data-testid=job-status]")).to_have_text("PENDING")
    expect(page.locator("[data-testid=pending-reason]")).to_be_visible()
    expect(watcher.locator(f"tr[data-job='{job_id}'] td.status")).to_have_text("PENDING")
    # Its latest start (the blocker's max_runtime, 24 h, away) reads as a local clock time, on its page
    # and in the jobs list, never as "now+86397s" (issue 16).
    starts = re.compile(r"starts (tomorrow at|on .+ at) \d")
    expect(page.locator("[data-testid=pending-reason]")).to_contain_text(starts, timeout=30_000)
    expect(watcher.locator(f"tr[data-job='{job_id}'] td.why .eta")).to_contain_text(starts, timeout=30_000)
    assert "now+" not in page.locator("[data-testid=pending-reason]").inner_text()
    watcher.screenshot(path=str(shots / "jobs.png"), full_page=True)

    queues = logged_in(browser, up)
    queues.goto(f"{up.url}/#/queues")
    expect(queues.locator("[data-testid=reasons] tr").first).not_to_contain_text("nothing is waiting")
    expect(queues.locator("[data-testid=pools]")).to_contain_text("default")
    queues.screenshot(path=str(shots / "queues.png"), full_page=True)
    queues.goto(f"{up.url}/#/fleet")
    expect(queues.locator("[data-testid=pool-default]")).to_contain_text("ALIVE")
    queues.screenshot(path=str(shots / "fleet.png"), full_page=True)

    # Cancel the running blocker from its page; the form's job then gets the worker.
    queues.on("dialog", lambda d: d.accept())
    queues.goto(f"{up.url}/#/job/{blocker}")
    expect(queues.locator("[data-testid=job-status]")).to_have_text("RUNNING")
    queues.click("[data-testid=cancel]")
    expect(queues.locator("[data-testid=job-status]")).to_have_text("CANCELLED", timeout=15_000)
    expect(queues.locator("[data-testid=restart]")).to_be_visible()

    # Logs stream in while it runs; the chart draws from the logged metric.
    expect(page.locator("[data-testid=job-status]")).to_have_text("RUNNING", timeout=10_000)
    expect(page.locator("[data-testid=log-rows]")).to_contain_text("step 2", timeout=10_000)
    assert up.job(job_id)["status"] == "RUNNING"  # the log arrived live, not after the end
    green = page.locator("[data-testid=log-rows] span[style*='ansi-green']").first
    expect(green).to_contain_text("step")
    expect(page.locator("canvas[data-metric=loss]")).to_be_visible(timeout=10_000)
    expect(page.locator("[data-testid=job-status]")).to_have_text("SUCCEEDED", timeout=20_000)
    expect(page.locator("[data-testid=log-rows]")).to_contain_text("training done")
    expect(page.locator("canvas[data-metric=loss]")).to_have_attribute("data-points", "12", timeout=5_000)
    page.fill("[data-testid=log-search]", "step 1")
    expect(page.locator("[data-testid=log-matches]")).to_contain_text("of 4")  # step 1, 10, 11, 12
    page.fill("[data-testid=log-search]", "")
    page.screenshot(path=str(shots / "job.png"), full_page=True)

    # The jobs tab saw the whole life of the job without a reload.
    expect(watcher.locator(f"tr[data-job='{job_id}'] td.status")).to_have_text("SUCCEEDED")
    assert watcher.evaluate("window.__noReload") is True
    seen = watcher.evaluate(f"window.__seen['{job_id}']")
    assert seen[0] == "PENDING" and seen[-1] == "SUCCEEDED" and "RUNNING" in seen, seen
    blocker_seen = watcher.evaluate(f"window.__seen['{blocker}']")
    assert blocker_seen[0] == "RUNNING" and blocker_seen[-1] == "CANCELLED", blocker_seen

    # Artifacts download through the API's presigned URL.
    link = page.locator("[data-artifact='result.txt']")
    expect(link).to_be_visible()
    with page.expect_download() as dl:
        link.click()
    assert Path(dl.value.path()).read_text() == "final loss 0.1667\n"
    with page.expect_download() as dl:
        page.click("[data-testid=log-download]")
    assert "training done" in Path(dl.value.path()).read_text()
    for p in (watcher, page, queues):
        p.context.close()


def test_submit_form_shows_field_errors(browser: Browser, up: Up) -> None:
    page = logged_in(browser, up)
    page.goto(f"{up.url}/#/submit")
    page.fill("[data-testid=spec-command]", "echo hi")
    page.fill("[data-testid=spec-cpu]", "-1")
    page.fill("[data-testid=spec-memory]", "lots")
    page.fill("[data-testid=spec-max_runtime]", "forever")
    page.click("[data-testid=submit]")
    expect(page.locator("[data-error-for='resources.memory']")).not_to_be_empty()
    expect(page.locator("[data-error-for='resources.cpu']")).not_to_be_empty()
    expect(page.locator("[data-error-for='max_runtime']")).not_to_be_empty()
    expect(page.locator("[data-testid=submit-errors]")).to_contain_text("not valid")
    assert "#/submit" in page.url  # nothing was submitted
    before = json.dumps(up.api.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]["name"])
    assert "echo" not in before
    page.context.close()


# Each task logs a loss curve whose lowest value is 1/(index+1), then leaves.
TASK_CODE = (
    "import os, trainyard.job as tj; i = int(os.environ['TRAINYARD_ARRAY_INDEX']); "
    "[tj.log_metric('loss', (3 - s) / (i + 1), s) for s in range(3)]"
)


def test_array_page_shows_its_tasks_in_a_grid_with_the_best_metric(
    browser: Browser, up: Up, shots: Path
) -> None:
    r = up.api.post(
        "/v1/jobs",
        json={
            "name": "sweep",
            "command": [sys.executable, "-c", TASK_CODE],
            "cwd": str(REPO),
            "array": {"indices": "0-3", "parallelism": 2},
            "resources": {"cpu": 0.25, "memory": "64Mi"},
        },
    )
    assert r.status_code == 201, r.text
    array = r.json()["id"]
    up.wait(array, {"SUCCEEDED", "FAILED"}, 60)
    page = logged_in(browser, up)
    page.goto(f"{up.url}/#/jobs")
    expect(page.locator(f"tr[data-job='{array}'] td.why")).to_have_text("array: 4 of 4 tasks done")
    page.goto(f"{up.url}/#/job/{array}")
    expect(page.locator(".logbox")).to_be_hidden()  # an array runs nothing itself
    expect(page.locator("[data-testid=restart]")).to_have_count(0)  # its tasks restart, one by one
    grid = page.locator("[data-testid=task-grid]")
    expect(grid.locator("a.cell")).to_have_count(4)
    expect(grid.locator("a.cell[data-status=SUCCEEDED]")).to_have_count(4)
    expect(page.locator("[data-testid=array-summary]")).to_contain_text(
        "4 tasks (indices 0-3, at most 2 at once)"
    )
    page.fill("[data-testid=array-metric]", "loss")
    page.select_option("[data-testid=array-best]", "min")
    page.locator("[data-testid=array] form button[type=submit]").click()
    expect(grid.locator("a.cell[data-task='1'] .best")).to_have_text("0.5000")
    expect(grid.locator("a.cell[data-task='3'] .best")).to_have_text("0.2500")
    page.screenshot(path=str(shots / "array.png"), full_page=True)
    grid.locator("a.cell[data-task='2']").click()
    expect(page.locator("[data-testid=array-link]")).to_have_text(array)
    assert page.url.endswith(f"#/job/{array}-2")
    expect(page.locator(".logbox")).to_be_visible()  # a task is a job: its own log, attempts, metrics
    expect(page.locator("[data-testid=attempts] tr")).to_have_count(1)
    page.context.close()
