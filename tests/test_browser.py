"""The views in a real browser: JupyterLab on loopback, headless Chromium driven by playwright.

Opens the course notebook 02_rmsnorm.ipynb when it shows the RMSNorm dashboard (else a small generated
notebook with a random model, the RMSNorm dashboard and the speculative-decoding dashboard), runs all
cells, checks that the plotly figures and the widgets rendered, moves the eps slider with the keyboard
and checks that the kernel redrew the figure (and, in the small notebook, steps and plays the
speculative decoder with its buttons). The screenshot goes to artifacts/ (git-ignored).

Skips when Debian's chromium (/usr/bin/chromium) is missing, unless MTP_LAB_REQUIRE_BROWSER=1 (CI).
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
SMOKE_CELLS = [
    # a random model and a byte-level tokenizer: the browser test checks the plumbing, not the weights
    """import torch
from mtp_lab import MTPModel, get_preset
import mtp_lab.viz as viz

class ByteTokenizer:
    def encode(self, text): return list(text.encode("utf-8"))
    def decode(self, ids): return bytes(ids).decode("utf-8", errors="replace")

torch.manual_seed(0)
model, tokenizer = MTPModel(get_preset("tiny", vocab_size=256)).eval(), ByteTokenizer()""",
    'dash = viz.rmsnorm_dashboard(model, tokenizer, prompt="def f(x):\\n    return x")\ndash',
    'spec = viz.speculative_dashboard(model, tokenizer, prompt="x = ", max_new_tokens=12)\nspec',
]


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
def notebook(tmp_path) -> Path:
    """The course notebook if it shows the RMSNorm dashboard, else the small generated one."""
    if COURSE_NOTEBOOK.exists() and "rmsnorm_dashboard(" in COURSE_NOTEBOOK.read_text():
        return COURSE_NOTEBOOK
    (tmp_path / "root").mkdir()
    path = tmp_path / "root" / "viz_smoke.ipynb"
    write_notebook(path, SMOKE_CELLS)
    return path


@pytest.fixture
def lab(tmp_path, notebook):
    """A JupyterLab server on loopback serving the notebook's folder; yields (base url, token)."""
    require_browser()
    root, settings, runtime = notebook.parent, tmp_path / "settings", tmp_path / "runtime"
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


def test_dashboards_render_and_respond_in_jupyterlab(lab, notebook):
    from playwright.sync_api import expect, sync_playwright

    url, token = lab
    smoke = notebook.name == "viz_smoke.ipynb"
    cells = nbformat.read(notebook, as_version=4).cells
    # code cells whose input shows (collapsed solution cells show a placeholder without a prompt number)
    n_code = sum(c.cell_type == "code" and not c.metadata.get("jupyter", {}).get("source_hidden") for c in cells)
    expect.set_options(timeout=60_000)         # a cold kernel imports torch and plotly first
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"{url}/lab/tree/{notebook.name}?token={token}&reset")
            page.wait_for_selector(".jp-Notebook .jp-Cell .jp-InputArea")
            expect(page.locator("#jp-main-statusbar")).to_contain_text("Idle")
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            prompts = page.locator(".jp-CodeCell .jp-InputPrompt:not(.jp-Placeholder-prompt)")
            for i in range(n_code):
                expect(prompts.nth(i)).to_have_text(re.compile(r"\[\d+\]:"))
            # the RMSNorm dashboard: figure drawn by plotly.js, controls by the ipywidgets manager
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
            if smoke:
                stderr = "application/vnd.jupyter.stderr"
                assert not page.locator(f".jp-OutputArea-output[data-mime-type='{stderr}']").count()
                # the speculative dashboard: its buttons run kernel handlers that redraw text, table, figure
                spec = page.locator(".jp-OutputArea-output", has=page.get_by_role("button", name="step"))
                spec.get_by_role("button", name="step").click()
                spec.get_by_role("button", name="step").click()
                spec_status = spec.locator(".widget-html-content", has_text="main forwards")
                expect(spec_status).to_contain_text("2 main forwards")
                expect(spec.locator("span[title='accepted'], span[title='corrected']").first).to_be_visible()
                spec.get_by_role("button", name="play").click()
                expect(spec_status).to_contain_text("finished")
                expect(spec.locator(".js-plotly-plot .main-svg").first).to_be_visible()
            dash.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "viz_browser.png"))
            if smoke:
                spec.scroll_into_view_if_needed()
                page.screenshot(path=str(ARTIFACTS / "viz_browser_speculative.png"))
        finally:
            browser.close()
