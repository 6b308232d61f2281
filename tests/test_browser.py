"""The app in a real browser: Debian's headless Chromium driven by Playwright against `streamlit run app.py`.

A teacher's path through the app: start a small demo E2VPT run from the Train page, watch the
progress move, wait for `done`, then open every page and see its charts, including the "why this
prompt" views (the pruning decision measured against reality, what each prompt looks at); then a
VPT-deep run through every page, and its embeddings beside E2VPT's with intervals.
Screenshots land in tests/artifacts/ (git-ignored). Never downloads a browser: without
/usr/bin/chromium (or Playwright) the test is skipped.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from e2vpt.runs import ACTIVE_STATES, RunDir

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


@pytest.mark.timeout(2 * RUN_TIMEOUT_S + 1800)
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
    seen = wait_until_done(page, runs / started[0], live_shot="train-live.png")
    values = [float(e.split("|")[0] or 0) for e in seen]
    assert len(set(values)) >= 3 and values == sorted(values), seen  # it moved, and only forward
    assert any("left" in e for e in seen), seen  # with a remaining-time estimate on the way
    wait_idle(page)
    page.locator(".js-plotly-plot").first.wait_for()
    no_exception_on(page)
    page.screenshot(path=str(ARTIFACTS / "train-done.png"))

    # the run's pages, each with its charts (Prompts: importance, segments, and what the prompts look at)
    walk_pages(page, started[0], prefix="", charts={"Prompts": 4, "Pruning": 3, "Embeddings": 1, "Compare": 1})

    # a click on a point of the Poincaré disk shows its image (plotly's hover labels hold text only)
    open_page(page, "Embeddings")
    point = page.locator(".js-plotly-plot .scatterlayer path.point").nth(5)
    point.scroll_into_view_if_needed()
    box = point.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.get_by_text("Selected images").first.wait_for(timeout=120_000)
    wait_idle(page)
    assert page.locator('[data-testid="stImage"] img').count() >= 1 and page.get_by_text(" · image ").count() >= 1
    no_exception_on(page)
    page.screenshot(path=str(ARTIFACTS / "embeddings-image-on-click.png"))

    # why this prompt: the pruning decision measured against removing each token for real
    open_page(page, "Prompts")
    page.get_by_role("button", name=re.compile("Measure round 1")).click()
    page.get_by_text("Spearman").first.wait_for(timeout=900_000)
    wait_idle(page, 900)
    no_exception_on(page)
    page.screenshot(path=str(ARTIFACTS / "prompts-why.png"))
    page.get_by_role("heading", name="What a prompt looks at").scroll_into_view_if_needed()
    page.wait_for_timeout(1000)
    page.screenshot(path=str(ARTIFACTS / "prompts-attention.png"))

    # a VPT-deep run on the same data, through every page, then its embeddings beside E2VPT's
    open_page(page, "Train")
    choose(page, "Method", "vpt-deep")
    assert page.get_by_label("Key-value prompts per layer (l)", exact=True).count() == 0  # not used: hidden
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("Started").first.wait_for(timeout=120_000)
    vpt_run = next(p.name for p in runs.iterdir() if p.name not in started)
    assert f"run={vpt_run}" in page.url
    seen = wait_until_done(page, runs / vpt_run)
    assert seen[-1].split("|", 1)[1].startswith("done"), seen[-5:]
    walk_pages(page, vpt_run, prefix="vpt-deep-", charts={"Prompts": 3, "Pruning": 1, "Embeddings": 1, "Compare": 1})
    open_page(page, "Embeddings")
    choose(page, "Side by side with", started[0])
    # the table comes after 1,000 paired resamples (the spinner says so meanwhile): wait for its interval column
    page.get_by_role("columnheader", name="95% interval").first.wait_for(timeout=600_000)
    wait_idle(page, 600)
    assert page.get_by_text("clearly better on").count() + page.get_by_text("no clear difference").count() >= 1
    no_exception_on(page)
    page.screenshot(path=str(ARTIFACTS / "embeddings-side-by-side.png"))


def choose(page, label: str, option: str) -> None:
    """Pick the option containing `option` in the selectbox labelled `label`."""
    page.locator('[data-testid="stSelectbox"]').filter(has_text=label).first.locator('[role="combobox"]').click()
    page.get_by_role("option").filter(has_text=option).first.click()
    wait_idle(page)


def wait_until_done(page, run_dir: Path, live_shot: str | None = None) -> list[str]:
    """Watch the current run's progress bar until the run ends: every distinct "value|text" seen.

    The end counts only once `run_dir` has ended on disk too: right after Start, the bar on screen can
    still be the previous run's "done" until the page re-renders (seen once: the test then opened the
    new run's pages while it was still queued)."""
    progress = page.locator('[data-testid="stProgress"]')
    seen: list[str] = []
    deadline = time.monotonic() + RUN_TIMEOUT_S
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
        if live_shot and "epoch" in text and page.locator(".js-plotly-plot").count() >= 1:
            page.screenshot(path=str(ARTIFACTS / live_shot))
            live_shot = None
        if text.startswith(("done", "failed", "cancelled", "interrupted")) and \
                RunDir(run_dir).status()["state"] not in ACTIVE_STATES:
            break
        time.sleep(2)
    assert seen and seen[-1].split("|", 1)[1].startswith("done"), seen[-5:]
    return seen


def walk_pages(page, run_id: str, prefix: str, charts: dict[str, int]) -> None:
    """Open each page for the current run: no exception, at least the charts expected, a screenshot."""
    for title, name in (("Prompts", "prompts"), ("Pruning", "pruning"), ("Embeddings", "embeddings"),
                        ("Runs", "runs"), ("Compare", "compare")):
        open_page(page, title)
        expected = charts.get(title, 0)
        if expected:
            plots = page.locator(".js-plotly-plot")
            plots.nth(expected - 1).wait_for(timeout=600_000)
            wait_idle(page, 600)
            assert plots.count() >= expected, (title, plots.count())
        no_exception_on(page)
        assert f"run={run_id}" in page.url
        page.screenshot(path=str(ARTIFACTS / f"{prefix}{name}.png"))


@contextlib.contextmanager
def screenshot_of(page, name: str):
    """Checks on `page` that end with no exception shown and a screenshot (`failure-<name>` when they fail)."""
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        yield
        no_exception_on(page)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    except BaseException:
        page.screenshot(path=str(ARTIFACTS / f"failure-{name}.png"))
        raise
    finally:
        page.close()


def open_sweeps(page, address: str) -> None:
    page.set_default_timeout(120_000)
    page.goto(address)
    page.get_by_role("heading", name="Sweeps", level=1).wait_for()
    wait_idle(page)


def check_frontier_ticks(plot) -> None:
    """Every tick label of a frontier chart, as the browser drew it, names its own value."""
    ticks = plot.evaluate("""el => ({
        y: Array.from(el.querySelectorAll('.ytick text')).map(t => [t.__data__.x, t.textContent]),
        x: Array.from(el.querySelectorAll('.xtick text')).map(t => [t.__data__.x, t.textContent])})""")
    assert len(ticks["y"]) >= 3 and len(ticks["x"]) >= 2, ticks
    for value, label in ticks["y"]:
        assert label.endswith("%") and abs(float(label[:-1]) - 100 * value) < 1e-6, (value, label)
    for exponent, label in ticks["x"]:  # a log axis: the datum is log10 of the value
        assert abs(float(label.replace(",", "")) - 10 ** exponent) < 1e-6 * 10 ** exponent, (exponent, label)


def test_the_shipped_class_comparison_opens_in_one_click_with_a_verdict_on_final_models(server, browser):
    url, runs = server
    page = browser.new_page(viewport={"width": 1400, "height": 1700})
    with screenshot_of(page, "sweeps-shipped"):
        open_sweeps(page, f"{url}/sweeps")
        page.get_by_role("button", name="Open class comparison").click()  # the one click
        verdict = page.get_by_text("digits: each method's final model")
        verdict.wait_for()
        text = verdict.inner_text()
        assert "(rounds kept and configuration chosen on validation)" in text, text
        for method in ("e2vpt p=8 l=", "vpt-deep p=", "linear: "):
            assert method in text, (method, text)
        assert re.search(r"e2vpt p=8 l=\d, kept rounds? [\d/]+: ", text), text  # its kept round, not round 0
        assert "e2vpt minus vpt-deep" in text and "Welch" in text, text
        assert "shipped-class-comparison" in page.url
        page.get_by_text("Opened from the evidence file").wait_for()
        plots = page.locator(".js-plotly-plot")
        plots.nth(0).wait_for()
        wait_idle(page)
        check_frontier_ticks(plots.nth(0))


def test_the_sweeps_page_draws_a_finished_sweeps_frontier(server, browser, fake_run):
    """After the demo test (which counts the folders in the runs root): a finished sweep's frontier, whose
    verdict names each method's final model (E2VPT's kept round, not its unpruned round 0 that scored
    best on test) and whose every tick label names its own value."""
    from test_sweeps import finished_sweep, set_rounds

    url, runs = server
    sweep = finished_sweep(runs, fake_run, seeds=(0, 1, 2))
    for trial, recorded in sweep.read()["trials"].items():
        if recorded["method"] == "e2vpt":
            set_rounds(sweep.path / trial, [(0.90, 0.947, 20_362), (0.91, 0.93, 9_000),
                                            (0.92, 0.926 - 0.002 * recorded["seed"], 5_710)], selected=2)
    page = browser.new_page(viewport={"width": 1400, "height": 1700})
    with screenshot_of(page, "sweeps"):
        open_sweeps(page, f"{url}/sweeps?sweep={sweep.id}")
        plots = page.locator(".js-plotly-plot")
        plots.nth(0).wait_for()  # the frontier (the parallel coordinates are drawn on request)
        verdict = page.get_by_text("digits: each method's final model")
        verdict.wait_for()
        text = verdict.inner_text()
        assert "e2vpt, kept round 2: 92.4 ± " in text and "5,710 parameters" in text, text
        assert "94.7" not in text and "e2vpt minus vpt-deep" in text, text
        assert page.locator(".js-plotly-plot .scatterlayer .trace").count() >= 4  # methods, other rounds, front
        check_frontier_ticks(plots.nth(0))
