"""The views in a real browser: JupyterLab on loopback, headless Chromium driven by playwright.

One JupyterLab server and one Chromium serve every test of this module (cold start once, about 20 s).

1. The course notebook 02_rmsnorm.ipynb (the shipped model), copied to a temporary folder, or a small
   generated stand-in while that notebook has no dashboard: run all cells, check that the RMSNorm
   dashboard's plotly figure and widgets rendered, move the eps slider with the keyboard and check that
   the kernel recomputed and redrew the figure. Then a small generated notebook with the live
   speculative-decoding dashboard (random tiny model): press "step" twice and "play", check the marked
   text, the status and the figure.
2. Every view of mtp_lab.viz (a generated notebook, random tiny model) at 1280x800 with the file browser
   open and at 1920x1080: a screenshot of each view at each size, and a failure when a figure
   (`.js-plotly-plot`) or a widget box is wider than its cell's output area (bounding boxes, 2 px slack).
3. Presentation mode: the RMSNorm dashboard in a notebook with slide metadata, opened with jupyterlab-rise's
   "RISE:slideshow" command; the live widget must render in the slideshow and its eps slider must respond
   to the keyboard. jupyterlab-rise 0.43.1 cannot show ipywidgets 8 (its standalone app fails to load the
   widget manager: jupyterlab-contrib/rise#119, #126), so that test is a strict xfail for exactly that
   reason: it turns into a failure (XPASS) once a release shows the widget, and fails for any other reason.

Screenshots go to artifacts/ (git-ignored): artifacts/browser/<view>_<width>x<height>.png and the files
named in each test. Skips when Debian's chromium (/usr/bin/chromium) is missing, unless
MTP_LAB_REQUIRE_BROWSER=1 (CI), where that is a failure; likewise for jupyterlab-rise in test 3.
"""

import contextlib
import importlib.util
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

pytestmark = pytest.mark.browser

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
SIZES = [(1280, 800), (1920, 1080)]   # a laptop with the file browser open; a projector / big screen
SLACK_PX = 2                          # rounding of fractional layout widths
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
# every view of mtp_lab.viz, one cell each (name -> code); the training monitor watches a 6-step run
VIEWS = {
    "architecture_view": "viz.architecture_view(model, seq_len=16)",
    "rmsnorm_dashboard": RMSNORM_CELLS[1],
    "fp8_explorer": "viz.fp8_explorer(model, tokenizer)",
    "speculative_dashboard": SPECULATIVE_CELLS[1],
    "speculative_race": 'viz.speculative_race(model, tokenizer, prompt="x = ", max_new_tokens=16)',
    "training_monitor": """import numpy as np
from mtp_lab.data import Corpus
from mtp_lab.train import TrainConfig, Trainer

class VocabOnly:   # what the Trainer asks of a tokenizer: its size, and its text for the run's corpus record
    def get_vocab_size(self): return 256
    def to_str(self): return "byte-level stand-in"

rng = np.random.default_rng(0)
splits = {s: rng.integers(0, 256, 4000).astype(np.uint16) for s in ("train", "val", "test")}
corpus = Corpus(VocabOnly(), splits, {})
monitor = viz.training_monitor()
display(monitor)
cfg = TrainConfig(steps=6, batch_size=2, seq_len=8, eval_interval=3, eval_batches=1, warmup=1, precision="fp32")
Trainer(get_preset("tiny", vocab_size=256), cfg, corpus, callbacks=[monitor]).fit();""",
    "speedup_lab": 'viz.speedup_lab([{"label": "tiny", "alpha": 0.6, "k": 2, "c": 0.3, "verify": 1.2, '
                   '"speedup": 1.3}])',
    "tree_view": 'viz.tree_view(model, tokenizer, prompt="abcabcabc", drafter="hybrid", num_draft=4)',
}
VIEW_SUFFIXES = ("_dashboard", "_view", "_explorer", "_race", "_monitor", "_lab")
SLIDE = {"slideshow": {"slide_type": "slide"}}
SLIDES_CELLS = [  # (cell type, source, metadata): the dashboard is the last cell, so RISE opens on it
    ("markdown", "# RMSNorm, live\nThe statistics dashboard in presentation mode.", SLIDE),
    ("code", SETUP, {"slideshow": {"slide_type": "skip"}}),
    ("code", RMSNORM_CELLS[1], SLIDE),
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


def write_notebook(path: Path, cells: list) -> None:
    """cells: code strings, or (cell type, source, metadata) triples."""
    made = []
    for c in cells:
        kind, source, meta = ("code", c, {}) if isinstance(c, str) else c
        new = nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell
        made.append(new(source, metadata=meta))
    nb = nbformat.v4.new_notebook(cells=made)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The served folder: rmsnorm.ipynb (the course notebook, or a stand-in), speculative.ipynb,
    views.ipynb (every view), presenter.ipynb (every view after viz.presenter()) and slides.ipynb (slide metadata,
    for RISE)."""
    root = tmp_path_factory.mktemp("lab") / "root"
    root.mkdir()
    if COURSE_NOTEBOOK.exists() and "rmsnorm_dashboard(" in COURSE_NOTEBOOK.read_text():
        shutil.copy(COURSE_NOTEBOOK, root / "rmsnorm.ipynb")
    else:
        write_notebook(root / "rmsnorm.ipynb", RMSNORM_CELLS)
    write_notebook(root / "speculative.ipynb", SPECULATIVE_CELLS)
    write_notebook(root / "views.ipynb", [SETUP, *VIEWS.values()])
    write_notebook(root / "presenter.ipynb", [SETUP + "\nviz.presenter()", *VIEWS.values()])
    write_notebook(root / "slides.ipynb", SLIDES_CELLS)
    return root


@contextlib.contextmanager
def jupyterlab(root: Path, tmp: Path, on_fail=pytest.fail, kernel_env: dict | None = None):
    """A JupyterLab server on loopback serving `root` (settings, runtime files and log under `tmp`); yields
    (base url, token). The app object is exposed as window.jupyterapp, so that tests can list and run commands by
    id. Also used by tools/browser_runall.py."""
    settings, runtime, workspaces = tmp / "settings", tmp / "runtime", tmp / "workspaces"
    for name, value in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    port, token = free_port(), secrets.token_hex(16)
    # the JUPYTERLAB_* variables reach server extensions that read them at import (jupyterlab-rise's app)
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(runtime), MTP_LAB_STATIC="0",
               JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(workspaces))
    env.pop("MTP_LAB_RUN_SOLUTIONS", None)     # a learner's kernel: Run All skips the %%solution cells
    env.pop("OMP_NUM_THREADS", None)           # and chooses its threads itself (mtp_lab.course.setup_kernel)
    env.update(kernel_env or {})               # unless told otherwise (tools/browser_runall.py --threads)
    log_path = tmp / "lab.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", "--allow-root", f"--ServerApp.root_dir={root}",
         f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={workspaces}",
         "--LabApp.expose_app_in_browser=True"],
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
                    on_fail("JupyterLab did not start:\n" + log_path.read_text()[-3000:])
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


@pytest.fixture(scope="module")
def lab(tmp_path_factory, root):
    """A JupyterLab server on loopback serving `root`; yields (base url, token)."""
    require_browser()
    with jupyterlab(root, tmp_path_factory.mktemp("server")) as served:
        yield served


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)         # a cold kernel imports torch and plotly first
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def shutdown_sessions(url: str, token: str) -> None:
    """Stop every kernel the last test started (each FigureWidget holds memory on both sides)."""
    with urllib.request.urlopen(f"{url}/api/sessions?token={token}", timeout=10) as r:
        sessions = json.load(r)
    for s in sessions:
        urllib.request.urlopen(urllib.request.Request(f"{url}/api/sessions/{s['id']}?token={token}",
                                                      method="DELETE"), timeout=10)


@pytest.fixture
def context(browser, lab):
    """A fresh browser context (its own pages and storage); its kernels are shut down afterwards."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    ctx.set_default_timeout(60_000)
    try:
        yield ctx
    finally:
        ctx.close()
        shutdown_sessions(*lab)


KNEE_X = """() => {  // x of the dashed r = sqrt(eps) line of the RMSNorm figure, null until drawn
    for (const gd of document.querySelectorAll('.js-plotly-plot')) {
        const tr = gd.data ? gd.data.find(t => t.name === 'knee r = √eps') : null;
        if (tr && tr.x && tr.x.length) return Array.from(tr.x);
    }
    return null;
}"""


DRAWN_COLOURS = """() => {  // trace name -> the marker (else line) colour plotly drew, for every figure on the page
    const drawn = {};
    for (const gd of document.querySelectorAll('.js-plotly-plot')) {
        (gd._fullData || []).forEach(t => {
            const c = (t.marker && t.marker.color) || (t.line && t.line.color);
            if (t.name && typeof c === 'string') drawn[t.name] = c.toUpperCase();
        });
    }
    return drawn;
}"""


def assert_palette_colours(page, expected: dict[str, str]) -> None:
    """The named traces are drawn in their palette colours (not reset to the template's colorway)."""
    from mtp_lab.viz.palette import color

    drawn = page.evaluate(DRAWN_COLOURS)
    wrong = {name: (drawn.get(name), color(key).upper()) for name, key in expected.items()
             if drawn.get(name) != color(key).upper()}
    assert not wrong, f"traces not in their palette colour (drawn, expected): {wrong}"


def run_all(page, url: str, token: str, path: Path) -> float:
    """Open a notebook, wait for its kernel, Run All Cells, wait until every visible code cell has run; return the
    seconds from the Run All click to the last prompt number (kernel start-up not included)."""
    from playwright.sync_api import expect

    cells = nbformat.read(path, as_version=4).cells
    # code cells whose input shows (collapsed solution cells show a placeholder without a prompt number)
    n_code = sum(c.cell_type == "code" and not c.metadata.get("jupyter", {}).get("source_hidden") for c in cells)
    page.goto(f"{url}/lab/tree/{path.name}?token={token}&reset")
    page.wait_for_selector(".jp-Notebook .jp-Cell .jp-InputArea")
    expect(page.locator("#jp-main-statusbar")).to_contain_text("Idle")
    page.get_by_role("menuitem", name="Run", exact=True).click()
    start = time.perf_counter()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    prompts = page.locator(".jp-CodeCell .jp-InputPrompt:not(.jp-Placeholder-prompt)")
    for i in range(n_code):
        expect(prompts.nth(i)).to_have_text(re.compile(r"\[\d+\]:"))
    return time.perf_counter() - start


def test_dashboards_render_and_respond_in_jupyterlab(context, lab, root):
    from playwright.sync_api import expect

    url, token = lab
    page = context.new_page()
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
    # greedy: the first panel shows the target's top candidates, coloured per bar; the other traces keep theirs
    expect(spec.locator(".js-plotly-plot .gtitle, .js-plotly-plot .annotation-text",
                        has_text="Greedy: the target's top").first).to_be_visible()
    assert_palette_colours(page, {"accepted at j / drafted at j": "accepted", "tau = 1 + accepted/steps": "accepted"})
    spec.get_by_role("button", name="play").click()
    expect(spec_status).to_contain_text("finished")
    spec.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "viz_browser_speculative.png"))


# Every figure and widget box of every code cell's outputs, with the box it must fit in: the output area
# (`.jp-OutputArea-output` scrolls what is wider than the cell), clipped to the cell and the notebook panel; for a
# figure also the width plotly drew (its svg: the div around it is as wide as the cell whatever plotly draws).
MEASURE = """() => {
    const boxes = [];
    const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
    const p = panel.getBoundingClientRect();
    document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-CodeCell')
        .forEach((cell, index) => {
            const c = cell.getBoundingClientRect();
            cell.querySelectorAll('.jp-OutputArea-output').forEach(area => {
                const a = area.getBoundingClientRect();
                const left = Math.max(a.left, c.left, p.left), right = Math.min(a.right, c.right, p.right);
                area.querySelectorAll('.js-plotly-plot, .widget-box').forEach(el => {
                    const r = el.getBoundingClientRect();
                    if (r.width === 0 && r.height === 0) return;   // not displayed (a hidden tab)
                    // a figure's div may be narrower than the fixed-size svg drawn in it, and a box may
                    // clip children wider than itself: the widest of the element, its svg, its content
                    let l = r.left, rr = r.right, drawn = null;
                    const svg = el.classList.contains('js-plotly-plot') ? el.querySelector('.main-svg') : null;
                    if (svg) {
                        const s = svg.getBoundingClientRect();
                        l = Math.min(l, s.left); rr = Math.max(rr, s.right); drawn = s.width;
                    }
                    rr = Math.max(rr, r.left + el.scrollWidth);
                    boxes.push({cell: index, kind: svg ? 'figure' : 'widget box', left: l, right: rr, width: rr - l,
                                drawn, area_left: left, area_right: right, area_width: right - left});
                });
            });
        });
    return boxes;
}"""


def settle(page) -> None:
    """Wait until the layout stops moving (plotly relayouts a responsive figure after a resize)."""
    last, stable = None, 0
    for _ in range(40):
        now = page.evaluate(MEASURE)
        stable = stable + 1 if now == last else 0
        if stable >= 2:
            return
        last = now
        page.wait_for_timeout(250)


def too_wide(boxes: list[dict], names: list[str]) -> list[str]:
    return [f"{names[b['cell']]}: {b['kind']} {b['width']:.0f} px wide (x {b['left']:.0f}-{b['right']:.0f}) in an "
            f"output area of {b['area_width']:.0f} px (x {b['area_left']:.0f}-{b['area_right']:.0f})"
            for b in boxes
            if b["right"] > b["area_right"] + SLACK_PX or b["left"] < b["area_left"] - SLACK_PX]


FILL_SLACK_PX = 24                    # a figure that fills its cell: at most this much narrower than the output area


def not_filling(boxes: list[dict]) -> list[str]:
    """Figures narrower than their cell's output area (plotly's default 700 px in a wide cell, a view that did not
    follow a resize): on a projector they waste the screen."""
    return [f"cell {b['cell']}: figure drawn {b['drawn']:.0f} px wide in an output area of {b['area_width']:.0f} px"
            for b in boxes if b["kind"] == "figure" and b["drawn"] < b["area_width"] - FILL_SLACK_PX]


def test_every_view_fits_its_cell_at_1280_and_1920(context, lab, root):
    """Each view of mtp_lab.viz, at 1280x800 with the file browser open and at 1920x1080: screenshots,
    and no figure or widget box wider than its cell's output area."""
    from playwright.sync_api import expect

    import mtp_lab.viz as viz

    listed = {n for n in viz.__all__ if n.endswith(VIEW_SUFFIXES)}
    assert listed <= set(VIEWS), f"views missing from this test: {sorted(listed - set(VIEWS))}"
    url, token = lab
    names = ["setup", *VIEWS]
    page = context.new_page()
    page.set_viewport_size({"width": SIZES[0][0], "height": SIZES[0][1]})
    run_all(page, url, token, root / "views.ipynb")
    assert not page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").count()
    cells = page.locator(".jp-Notebook .jp-CodeCell")
    for i in range(1, len(names)):      # every view drew its figures
        expect(cells.nth(i).locator(".js-plotly-plot .main-svg").first).to_be_visible()
    assert_palette_colours(page, {"E4M3": "e4m3", "E5M2": "e5m2", "E4M3 error": "e4m3", "E5M2 error": "e5m2"})
    if not page.locator("#filebrowser").is_visible():
        page.locator(".jp-SideBar [data-id='filebrowser']").click()
    (ARTIFACTS / "browser").mkdir(parents=True, exist_ok=True)
    problems = []
    for width, height in SIZES:
        page.set_viewport_size({"width": width, "height": height})
        expect(page.locator("#filebrowser")).to_be_visible()
        settle(page)
        for i, name in enumerate(names[1:], start=1):
            cells.nth(i).evaluate("cell => cell.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(150)
            page.screenshot(path=str(ARTIFACTS / "browser" / f"{name}_{width}x{height}.png"))
        boxes = page.evaluate(MEASURE)
        assert {b["cell"] for b in boxes if b["kind"] == "figure"} == set(range(1, len(names))), boxes
        problems += [f"{width}x{height} {p}" for p in too_wide(boxes, names)]
        if width >= 1920:   # a projector: every figure fills its cell, none stays at plotly's default 700 px
            problems += [f"{width}x{height} {p}" for p in not_filling(boxes)]
    assert not problems, (f"{len(problems)} figure(s)/widget box(es) wider than their cell, or figures narrower "
                          f"(screenshots in {ARTIFACTS / 'browser'}):\n" + "\n".join(problems))


# The computed font size of every control of every view's output: labels (descriptions), slider readouts, buttons,
# dropdowns, text boxes, and the code (token) cells of HTML tables.
CONTROL_FONTS = """() => {
    const out = [];
    const sel = '.widget-label, .widget-readout, .jupyter-button, select, input[type=text], textarea, td code';
    document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-CodeCell')
        .forEach((cell, index) => cell.querySelectorAll('.jp-OutputArea-output').forEach(area =>
            area.querySelectorAll(sel).forEach(el => {
                const r = el.getBoundingClientRect();
                if (r.width === 0 && r.height === 0) return;
                const what = el.matches('td code') ? 'table token' : el.matches('.widget-label') ? 'label'
                    : el.matches('.widget-readout') ? 'readout' : el.matches('.jupyter-button') ? 'button'
                    : el.tagName.toLowerCase();
                out.push({cell: index, what, text: (el.innerText || el.value || '').slice(0, 30),
                          size: parseFloat(getComputedStyle(el).fontSize)});
            })));
    return out;
}"""


def small_controls(controls: list[dict], names: list[str], want_px: float) -> list[str]:
    """Controls whose text is smaller than `want_px` (the presenter font size)."""
    return [f"{names[c['cell']]}: {c['what']} {c['text']!r} at {c['size']:.1f} px" for c in controls
            if c["size"] < want_px - 0.5]


def test_presenter_mode_scales_controls_and_views_fill_1920(context, lab, root):
    """After viz.presenter(), at 1920x1080: every view's controls (labels, readouts, buttons, dropdowns, text boxes,
    the draft table's tokens) are at the presenter font size, like the plots' text, and every figure fills its
    cell without overflowing it."""
    from mtp_lab.viz import theme

    url, token = lab
    names = ["setup", *VIEWS]
    page = context.new_page()
    page.set_viewport_size({"width": 1920, "height": 1080})
    run_all(page, url, token, root / "presenter.ipynb")
    assert not page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").count()
    for _ in range(2):                                          # the prefill, then a step with drafts: the table
        page.get_by_role("button", name="step").first.click()
    page.locator("td code").first.wait_for()
    settle(page)
    controls = page.evaluate(CONTROL_FONTS)
    kinds = {c["what"] for c in controls}
    assert {"label", "readout", "button", "select", "table token"} <= kinds, kinds
    boxes = page.evaluate(MEASURE)
    problems = small_controls(controls, names, theme.FONT * theme.PRESENTER_SCALE)
    problems += too_wide(boxes, names) + not_filling(boxes)
    (ARTIFACTS / "browser").mkdir(parents=True, exist_ok=True)
    cells = page.locator(".jp-Notebook .jp-CodeCell")
    for i, name in enumerate(names[1:], start=1):
        cells.nth(i).evaluate("cell => cell.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(150)
        page.screenshot(path=str(ARTIFACTS / "browser" / f"{name}_presenter_1920x1080.png"))
    assert not problems, f"{len(problems)} control(s) or figure(s) not at presenter size:\n" + "\n".join(problems)


class WidgetNotRenderedInRise(AssertionError):
    """The slideshow shows a widget's text fallback instead of the widget (the known RISE limitation)."""


def require_rise():
    if importlib.util.find_spec("jupyterlab_rise") is None:
        reason = "jupyterlab-rise is not installed (pip install jupyterlab-rise)"
        if os.environ.get("MTP_LAB_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " (MTP_LAB_REQUIRE_BROWSER=1)")
        pytest.skip(reason)


@pytest.mark.xfail(raises=WidgetNotRenderedInRise, strict=True,
                   reason="jupyterlab-rise 0.43.1 + ipywidgets 8: RISE's slideshow app fails to load the widget "
                          "manager and shows the widget's text repr (jupyterlab-contrib/rise#119, #126)")
def test_live_widget_in_rise_slideshow(context, lab, root):
    """Run a notebook with slide metadata, open it with jupyterlab-rise's slideshow command, run the dashboard
    cell again inside the slideshow, then move its eps slider with the keyboard."""
    from playwright.sync_api import expect

    require_rise()
    url, token = lab
    page = context.new_page()
    page.set_viewport_size({"width": SIZES[0][0], "height": SIZES[0][1]})
    run_all(page, url, token, root / "slides.ipynb")
    expect(page.locator(".jp-Notebook .widget-slider").first).to_be_visible()       # live in the notebook
    commands = page.evaluate("() => window.jupyterapp.commands.listCommands().filter(c => /^rise:/i.test(c))")
    assert "RISE:slideshow" in commands, f"jupyterlab-rise's slideshow command is not registered: {commands}"
    console = []                                   # the new tab's messages, from its first script on
    context.on("console", lambda m: console.append(f"{m.type}: {m.text.splitlines()[0][:200]}"))
    with context.expect_page() as opened:          # the command saves, then opens /rise/<path> in a new tab
        page.evaluate("() => window.jupyterapp.commands.execute('RISE:slideshow')")
    rise = opened.value
    assert "/rise/slides.ipynb" in rise.url
    slide = rise.locator(".reveal .slides section.present")
    expect(slide.locator(".jp-CodeCell")).to_contain_text("rmsnorm_dashboard")   # opened on the dashboard
    prompt = slide.locator(".jp-CodeCell .jp-InputPrompt").first
    expect(prompt).to_have_text(re.compile(r"\[\d+\]:"))
    before = prompt.inner_text()
    # run it inside the slideshow: the output is then made by this page's own renderers
    slide.locator(".jp-CodeCell .cm-content").first.click()
    rise.keyboard.press("Shift+Enter")
    expect(prompt).not_to_have_text(before)
    expect(prompt).to_have_text(re.compile(r"\[\d+\]:"))
    output = slide.locator(".jp-OutputArea-output").first
    expect(output).to_be_visible()
    rise.wait_for_timeout(2000)                    # a widget view renders asynchronously
    rise.screenshot(path=str(ARTIFACTS / "rise_slideshow.png"))
    if not slide.locator(".widget-slider").count():
        manager = [m for m in console if "jupyterlab-manager" in m or "jupyter-widgets" in m or "Widget" in m]
        raise WidgetNotRenderedInRise(
            f"the slideshow shows {output.get_attribute('data-mime-type')!r}: {output.inner_text()[:120]!r} "
            f"instead of the dashboard; console: {manager[:4]}")
    # the widget rendered: it must respond (keyboard on the slider handle, not the slide navigation)
    status = slide.locator(".widget-html-content", has_text="knee at")
    expect(status).to_contain_text("eps = 1.0e-06")
    slide.locator(".widget-slider .noUi-handle").first.focus()
    rise.keyboard.press("ArrowRight")
    expect(status).to_contain_text("eps = 1.8e-06")
    rise.screenshot(path=str(ARTIFACTS / "rise_slideshow.png"))
