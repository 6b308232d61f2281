"""The app in a real browser: Debian's headless Chromium driven by Playwright against `streamlit run app.py`.

A teacher's path through the app: start a small demo E2VPT run from the Train page, watch the
progress move, wait for `done`, then open Prompts, Pruning and Embeddings and see their charts.
Screenshots land in tests/artifacts/ (git-ignored). Never downloads a browser: without
/usr/bin/chromium (or Playwright) the test is skipped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RUN_TIMEOUT_S = 1200  # a tiny run takes a minute or two on an idle CPU; much longer on a busy one

pytestmark = [pytest.mark.browser, pytest.mark.slow]
if not Path(CHROMIUM).is_file():
    pytest.skip(f"{CHROMIUM} is missing (Debian's chromium package); browser tests skipped",
                allow_module_level=True)
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`streamlit run app.py` on a free loopback port, with its own empty runs root."""
    runs = tmp_path_factory.mktemp("browser") / "runs"
    port = free_port()
    env = dict(os.environ, E2VPT_RUNS_ROOT=str(runs), E2VPT_DATA_ROOT=str(runs.parent / "data"))
    log = open(runs.parent / "streamlit.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.headless", "true", "--server.address", "127.0.0.1"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited: {(runs.parent / 'streamlit.log').read_text()[-2000:]}")
    else:
        raise RuntimeError("streamlit did not answer within 180 s")
    yield url, runs
    # stop runs still training (they live in their own sessions), then the server
    from e2vpt import launch
    from e2vpt import runs as run_store

    for row in run_store.list_runs(runs):
        if row["state"] in ("queued", "running"):
            launch.cancel_run(row["id"], runs)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def no_exception_on(page) -> None:
    shown = page.locator('[data-testid="stException"]')
    assert shown.count() == 0, shown.first.inner_text()


def wait_idle(page, timeout_s: float = 120) -> None:
    """Until the script run finished (Streamlit's status widget gone)."""
    page.wait_for_timeout(500)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=timeout_s * 1000)


def open_page(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
    page.get_by_role("heading", name=title, level=1).wait_for(timeout=120_000)
    wait_idle(page)


def set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Tab")


@pytest.mark.timeout(RUN_TIMEOUT_S + 1200)
def test_a_demo_run_from_train_to_embeddings(server, browser):
    url, runs = server
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1700})
    page.set_default_timeout(120_000)
    try:
        drive(page, url, runs)
    except BaseException:
        page.screenshot(path=str(ARTIFACTS / "failure.png"))  # what the browser showed when it went wrong
        raise
    finally:
        page.close()


def drive(page, url: str, runs: Path) -> None:
    page.goto(url)
    page.get_by_role("heading", name="Train", level=1).wait_for()
    wait_idle(page)
    no_exception_on(page)

    # a demo E2VPT run on the shipped pretrained ViT, through the form (its screenshots feed the README)
    assert page.get_by_role("checkbox", name="Pretrained backbone").is_checked()
    set_number(page, "Epochs", 2)
    set_number(page, "Epochs after each pruning round", 1)
    set_number(page, "Visual prompt tokens per layer (p)", 8)
    set_number(page, "Key-value prompts per layer (l)", 4)
    set_number(page, "Pruning rounds", 1)
    page.screenshot(path=str(ARTIFACTS / "train-form.png"))
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("Started").first.wait_for(timeout=120_000)
    no_exception_on(page)
    assert "run=" in page.url
    started = [p.name for p in runs.iterdir()]
    assert len(started) == 1

    # progress moves while it trains, then the run is done
    progress = page.locator('[data-testid="stProgress"]')
    seen: list[str] = []
    deadline = time.monotonic() + RUN_TIMEOUT_S
    shot_live = False
    while time.monotonic() < deadline:
        try:
            text = progress.first.inner_text(timeout=10_000).strip()
            value = progress.first.locator('[role="progressbar"]').get_attribute("aria-valuenow", timeout=10_000)
        except Exception:  # the fragment is re-rendering
            time.sleep(1)
            continue
        entry = f"{value}|{text}"
        if not seen or seen[-1] != entry:
            seen.append(entry)
        if not shot_live and "epoch" in text and page.locator(".js-plotly-plot").count() >= 1:
            page.screenshot(path=str(ARTIFACTS / "train-live.png"))
            shot_live = True
        if text.startswith(("done", "failed", "cancelled", "interrupted")):
            break
        time.sleep(2)
    assert seen and seen[-1].split("|", 1)[1].startswith("done"), seen[-5:]
    values = [float(e.split("|")[0] or 0) for e in seen]
    assert len(set(values)) >= 3 and values == sorted(values), seen  # it moved, and only forward
    wait_idle(page)
    page.locator(".js-plotly-plot").first.wait_for()
    no_exception_on(page)
    page.screenshot(path=str(ARTIFACTS / "train-done.png"))

    # the run's pages, each with its charts
    for title, charts, name in (("Prompts", 2, "prompts"), ("Pruning", 3, "pruning"), ("Embeddings", 1, "embeddings"),
                                ("Runs", 0, "runs"), ("Compare", 1, "compare")):
        open_page(page, title)
        if charts:
            plots = page.locator(".js-plotly-plot")
            plots.nth(charts - 1).wait_for(timeout=600_000)  # Embeddings embeds the test images first
            wait_idle(page, 600)
            assert plots.count() >= charts
        no_exception_on(page)
        assert f"run={started[0]}" in page.url
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def test_the_sweeps_page_draws_a_finished_sweeps_frontier(server, browser, fake_run):
    """After the demo test (which counts the folders in the runs root): a finished sweep's frontier."""
    from test_sweeps import finished_sweep

    url, runs = server
    sweep = finished_sweep(runs, fake_run)
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1700})
    page.set_default_timeout(120_000)
    try:
        page.goto(f"{url}/sweeps?sweep={sweep.id}")
        page.get_by_role("heading", name="Sweeps", level=1).wait_for()
        wait_idle(page)
        plots = page.locator(".js-plotly-plot")
        plots.nth(1).wait_for()  # the frontier and the parallel coordinates
        assert page.get_by_text("Best of each method").count() >= 1
        assert page.locator(".js-plotly-plot .scatterlayer .trace").count() >= 3  # one per method, and the front
        no_exception_on(page)
        page.screenshot(path=str(ARTIFACTS / "sweeps.png"))
    except BaseException:
        page.screenshot(path=str(ARTIFACTS / "failure-sweeps.png"))
        raise
    finally:
        page.close()
