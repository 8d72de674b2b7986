"""The views in a real browser: JupyterLab on loopback, headless Chromium driven by playwright.

1. The course notebook 02_rmsnorm.ipynb (the shipped model), copied to a temporary folder, or a small
   generated stand-in while that notebook has no dashboard: run all cells, check that the RMSNorm
   dashboard's plotly figure and widgets rendered, move the eps slider with the keyboard and check that
   the kernel recomputed and redrew the figure.
2. A small generated notebook with the live speculative-decoding dashboard (random tiny model): press
   "step" twice and "play", check the marked text, the status and the figure.
Screenshots go to artifacts/ (git-ignored). Skips when Debian's chromium (/usr/bin/chromium) is missing,
unless MTP_LAB_REQUIRE_BROWSER=1 (CI), where that is a failure.
"""

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
COURSE_NOTEBOOK = ROOT / "notebooks" / "02_rmsnorm.ipynb"
# user settings for this server only: no news toast, no autosave (the notebook stays as written), every
# cell rendered (JupyterLab 4 otherwise shows off-screen cells as empty placeholders)
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                       "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}
SETUP = """import torch
from mtp_lab import MTPModel, get_preset
import mtp_lab.viz as viz

class ByteTokenizer:
    def encode(self, text): return list(text.encode("utf-8"))
    def decode(self, ids): return bytes(ids).decode("utf-8", errors="replace")

torch.manual_seed(0)
model, tokenizer = MTPModel(get_preset("tiny", vocab_size=256)).eval(), ByteTokenizer()"""
# a random model and a byte-level tokenizer: these check the plumbing, not the weights
RMSNORM_CELLS = [SETUP, 'viz.rmsnorm_dashboard(model, tokenizer, prompt="def f(x):\\n    return x")']
SPECULATIVE_CELLS = [SETUP, 'viz.speculative_dashboard(model, tokenizer, prompt="x = ", max_new_tokens=12)']


def require_browser():
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is missing: install Debian's chromium (`make browser` or apt-get install chromium)"
        if os.environ.get("MTP_LAB_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " (MTP_LAB_REQUIRE_BROWSER=1)")
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def root(tmp_path) -> Path:
    """The served folder: rmsnorm.ipynb (the course notebook, or a stand-in) and speculative.ipynb."""
    root = tmp_path / "root"
    root.mkdir()
    if COURSE_NOTEBOOK.exists() and "rmsnorm_dashboard(" in COURSE_NOTEBOOK.read_text():
        shutil.copy(COURSE_NOTEBOOK, root / "rmsnorm.ipynb")
    else:
        write_notebook(root / "rmsnorm.ipynb", RMSNORM_CELLS)
    write_notebook(root / "speculative.ipynb", SPECULATIVE_CELLS)
    return root


@pytest.fixture
def lab(tmp_path, root):
    """A JupyterLab server on loopback serving `root`; yields (base url, token)."""
    require_browser()
    settings, runtime = tmp_path / "settings", tmp_path / "runtime"
    for name, value in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(runtime), MTP_LAB_STATIC="0")
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", "--allow-root", f"--ServerApp.root_dir={root}",
         f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120   # a cold start on a busy machine
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("JupyterLab did not start:\n" + (tmp_path / "lab.log").read_text()[-3000:])
                time.sleep(0.3)
        yield url, token
    finally:
        try:  # shuts the kernels down too
            urllib.request.urlopen(urllib.request.Request(f"{url}/api/shutdown?token={token}", method="POST"),
                                   timeout=5)
        except OSError:
            pass
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def write_notebook(path: Path, cells: list[str]) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, path)


KNEE_X = """() => {  // x of the dashed r = sqrt(eps) line of the RMSNorm figure, null until drawn
    for (const gd of document.querySelectorAll('.js-plotly-plot')) {
        const tr = gd.data ? gd.data.find(t => t.name === 'r = sqrt(eps)') : null;
        if (tr && tr.x && tr.x.length) return Array.from(tr.x);
    }
    return null;
}"""


def run_all(page, url: str, token: str, path: Path) -> None:
    """Open a notebook, wait for its kernel, Run All Cells, wait until every visible code cell has run."""
    from playwright.sync_api import expect

    cells = nbformat.read(path, as_version=4).cells
    # code cells whose input shows (collapsed solution cells show a placeholder without a prompt number)
    n_code = sum(c.cell_type == "code" and not c.metadata.get("jupyter", {}).get("source_hidden") for c in cells)
    page.goto(f"{url}/lab/tree/{path.name}?token={token}&reset")
    page.wait_for_selector(".jp-Notebook .jp-Cell .jp-InputArea")
    expect(page.locator("#jp-main-statusbar")).to_contain_text("Idle")
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    prompts = page.locator(".jp-CodeCell .jp-InputPrompt:not(.jp-Placeholder-prompt)")
    for i in range(n_code):
        expect(prompts.nth(i)).to_have_text(re.compile(r"\[\d+\]:"))


def test_dashboards_render_and_respond_in_jupyterlab(lab, root):
    from playwright.sync_api import expect, sync_playwright

    url, token = lab
    expect.set_options(timeout=60_000)         # a cold kernel imports torch and plotly first
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            # 1. RMSNorm statistics: the figure drawn by plotly.js, the controls by the ipywidgets manager
            run_all(page, url, token, root / "rmsnorm.ipynb")
            dash = page.locator(".jp-OutputArea-output", has=page.locator(".widget-html-content", has_text="knee at"))
            expect(dash.locator(".js-plotly-plot .main-svg").first).to_be_visible()
            expect(dash.locator(".widget-dropdown select")).to_be_visible()
            expect(dash.locator("textarea")).to_be_visible()
            status = dash.locator(".widget-html-content", has_text="knee at")
            expect(status).to_contain_text("eps = 1.0e-06")
            page.wait_for_function(f"({KNEE_X})() !== null", polling=250)
            assert page.evaluate(KNEE_X) == pytest.approx([1e-3, 1e-3])
            # move the eps slider one step (10^0.25) with the keyboard: the kernel recomputes and redraws
            dash.locator(".widget-slider .noUi-handle").first.focus()
            page.keyboard.press("ArrowRight")
            expect(status).to_contain_text("eps = 1.8e-06")
            page.wait_for_function(f"({KNEE_X})()[0] > 1.2e-3", polling=250)
            assert page.evaluate(KNEE_X)[0] == pytest.approx(10 ** (-5.75 / 2), rel=1e-6)
            dash.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "viz_browser.png"))
            # 2. live speculative decoding: buttons run kernel handlers that redraw text, table and figure
            run_all(page, url, token, root / "speculative.ipynb")
            assert not page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").count()
            spec = page.locator(".jp-OutputArea-output", has=page.get_by_role("button", name="step"))
            expect(spec.locator(".js-plotly-plot .main-svg").first).to_be_visible()
            spec.get_by_role("button", name="step").click()
            spec.get_by_role("button", name="step").click()
            spec_status = spec.locator(".widget-html-content", has_text="main forwards")
            expect(spec_status).to_contain_text("2 main forwards")
            expect(spec.locator("span[title='accepted'], span[title='corrected']").first).to_be_visible()
            spec.get_by_role("button", name="play").click()
            expect(spec_status).to_contain_text("finished")
            spec.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "viz_browser_speculative.png"))
        finally:
            browser.close()
