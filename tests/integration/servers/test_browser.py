"""The MLflow UI in headless Chromium lists the pipeline's parent run and its trials.

Debian's Chromium (``infra/local/ensure-chromium`` installs it when missing) is
driven by Playwright through ``executable_path``; Playwright's own browser
downloads are never used. The screenshot is kept in ``.state/test-artifacts/``.
"""

import subprocess
from pathlib import Path

import pytest

from .conftest import ARTIFACTS, REPO, parent_run

pytestmark = [pytest.mark.integration, pytest.mark.servers, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps calling home, which a closed
# network refuses; --no-sandbox because tests run as root in CI.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        proc = subprocess.run(
            [str(REPO / "infra" / "local" / "ensure-chromium")],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, f"infra/local/ensure-chromium failed:\n{proc.stderr[-3000:]}"
    return CHROMIUM


def test_mlflow_ui_lists_the_parent_run_and_its_trials(stack, pipeline_run, chromium):
    from playwright.sync_api import expect, sync_playwright

    parent = parent_run(stack, pipeline_run.experiment, pipeline_run.id)
    url = (
        f"{stack.mlflow}/#/experiments/{parent.info.experiment_id}/runs"
        "?workflowType=machine_learning"
    )
    shot = ARTIFACTS / "mlflow-experiment-runs.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(url)
            row = page.locator("[role=row]", has_text=parent.info.run_name)
            row.wait_for(timeout=60_000)
            assistant = page.get_by_role("button", name="Close")  # MLflow 3's side panel
            if assistant.count():
                assistant.first.click()
            row.get_by_role("button").first.click()  # expand the parent to its child runs
            for i in range(6):
                expect(page.get_by_text(f"trial-{i:03d}", exact=True)).to_be_visible()
            expect(page.get_by_text("7 matching runs")).to_be_visible()
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
