"""Time Run All of the course notebooks in a real browser, as a learner meets them.

JupyterLab on loopback and Debian's headless Chromium (the browser tests' flow, tests/test_browser.py): each
notebook is copied to a temporary folder, opened, its kernel started, then "Run All Cells" is clicked and the
clock runs until every code cell shows its prompt number. The kernel chooses its own threads (the first cell,
mtp_lab.course.setup_kernel) and skips the %%solution cells, as a learner's does. Kernel start-up is not in the
time. Each notebook's kernel is shut down before the next one starts.

    python tools/browser_runall.py                    # all nine at 1280x800, one table
    python tools/browser_runall.py 04 07 --size 1920x1080 --repeats 2
    python tools/browser_runall.py 04 --threads 2      # torch's default on 2 cores, for comparison

Also reports every figure narrower than its cell (the fill check of tests/test_browser.py) and writes a
screenshot of each notebook's end to artifacts/runall/. On a shared machine the times are pessimistic: say so
when quoting them.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"


def _browser_tests():
    """tests/test_browser.py as a module (its server, Chromium flags, Run All and measurements)."""
    spec = importlib.util.spec_from_file_location("mtp_lab_browser_tests", ROOT / "tests" / "test_browser.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "tests"))
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("only", nargs="*", help="notebooks whose file name starts with these prefixes (default: all)")
    ap.add_argument("--size", default="1280x800", help="browser viewport WIDTHxHEIGHT")
    ap.add_argument("--repeats", type=int, default=1, help="Run All this many times per notebook (fresh kernel each)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds allowed for one notebook's Run All")
    ap.add_argument("--threads", type=int, default=None,
                    help="force the kernels' torch threads (OMP_NUM_THREADS) instead of the first cell's choice")
    args = ap.parse_args(argv)
    bt = _browser_tests()
    if not Path(bt.CHROMIUM).exists():
        print(f"{bt.CHROMIUM} is missing: `make browser` installs Debian's chromium", file=sys.stderr)
        return 1
    width, height = (int(v) for v in args.size.lower().split("x"))
    paths = sorted(p for p in NB_DIR.glob("0*.ipynb") if not args.only or p.name.startswith(tuple(args.only)))
    if not paths:
        print(f"no notebooks match {args.only} in {NB_DIR}", file=sys.stderr)
        return 1
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=args.timeout * 1000)
    shots = ROOT / "artifacts" / "runall"
    shots.mkdir(parents=True, exist_ok=True)
    times: dict[str, list[float]] = {}
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        for p in paths:
            shutil.copy(p, root / p.name)
        server = Path(tmp) / "server"
        server.mkdir()

        def fail(message):
            raise RuntimeError(message)

        kernel_env = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else None
        with bt.jupyterlab(root, server, on_fail=fail, kernel_env=kernel_env) as (url, token), \
                sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=bt.CHROMIUM, args=bt.CHROMIUM_FLAGS, headless=True)
            for p in paths:
                for _ in range(args.repeats):
                    ctx = browser.new_context(viewport={"width": width, "height": height})
                    ctx.set_default_timeout(args.timeout * 1000)
                    page = ctx.new_page()
                    seconds = bt.run_all(page, url, token, root / p.name)
                    times.setdefault(p.stem, []).append(seconds)
                    bt.settle(page)
                    problems += [f"{p.stem} {width}x{height}: {m}" for m in bt.not_filling(page.evaluate(bt.MEASURE))]
                    page.screenshot(path=str(shots / f"{p.stem}_{width}x{height}.png"))
                    ctx.close()
                    bt.shutdown_sessions(url, token)
                    print(f"{p.stem:28s} {seconds:6.1f} s", flush=True)
            browser.close()
    threads = f"{args.threads} torch thread(s) forced" if args.threads else "threads chosen by the first cell"
    print(f"\nRun All in JupyterLab + headless Chromium at {width}x{height}, {threads} (kernel start not included), "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}:")
    for name, ts in times.items():
        spread = f" (runs: {', '.join(f'{t:.1f}' for t in ts)})" if len(ts) > 1 else ""
        print(f"  {name:28s} {statistics.median(ts):6.1f} s{spread}")
    print(f"  {'total (medians)':28s} {sum(statistics.median(ts) for ts in times.values()):6.1f} s")
    if problems:
        print("\nfigures that do not fill their cell:\n  " + "\n  ".join(problems))
    return 0


if __name__ == "__main__":
    sys.exit(main())
