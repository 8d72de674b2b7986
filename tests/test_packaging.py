"""pyproject.toml: torch pinned one way, every third-party import declared where it is used, the version and the
licence written once and read from the metadata; the command line's --version, preset list and bench defaults."""

import ast
import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib  # Python 3.11+
except ModuleNotFoundError:  # Python 3.10 (requires-python >= 3.10): tomli is the same parser (the test extra has it)
    import tomli as tomllib

import mtp_lab

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def names(specs: list[str]) -> set[str]:
    """Normalised distribution names of requirement strings."""
    return {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", s).group()).lower() for s in specs}


def test_torch_is_pinned_once_and_the_installer_agrees():
    specs = PROJECT["dependencies"] + sum(PROJECT["optional-dependencies"].values(), [])
    assert [s for s in specs if re.match(r"torch\b", s)] == ["torch==2.13.0"]
    assert "torch==2.13.0" in (ROOT / "tools" / "venv_torch.py").read_text()


def third_party_imports(folder: str) -> set[str]:
    """Top-level names imported by the .py files under `folder` that are neither standard library nor ours."""
    ours = {"mtp_lab", *(p.stem for folder in ("tests", "tools") for p in (ROOT / folder).glob("*.py"))}
    found = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                found.add(node.module.split(".")[0])
    return {n for n in found if n not in sys.stdlib_module_names and n not in ours and n != "tomli"}


def distributions(modules: set[str]) -> set[str]:
    providers = md.packages_distributions()
    return {re.sub(r"[-_.]+", "-", providers[m][0]).lower() for m in modules}


def test_every_import_is_declared_where_it_is_used():
    library = distributions(third_party_imports("mtp_lab"))
    assert library <= names(PROJECT["dependencies"]), library - names(PROJECT["dependencies"])
    extras = names(PROJECT["dependencies"] + PROJECT["optional-dependencies"]["test"])
    for folder in ("tools", "tests", "notebooks/src"):
        used = distributions(third_party_imports(folder))
        assert used <= extras, (folder, used - extras)


def test_the_library_needs_no_jupyter_server():
    assert not names(PROJECT["dependencies"]) & {"jupyterlab", "jupyterlab-rise", "ipykernel", "notebook"}
    assert {"jupyterlab", "jupyterlab-rise", "ipykernel"} <= names(PROJECT["optional-dependencies"]["course"])


def test_version_and_licence_written_once():
    assert mtp_lab.__version__ == md.version("mtp-lab") == PROJECT["version"]
    assert PROJECT["version"] not in (ROOT / "mtp_lab" / "__init__.py").read_text()
    assert PROJECT["license"] == "MIT"                                   # an SPDX expression, not a table


@pytest.mark.slow        # 6 s: four subprocesses import torch
def test_cli_version_info_and_bench_help():
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "mtp_lab.cli", *args], capture_output=True, text=True, cwd=ROOT)
    assert cli("--version").stdout == f"mtp-lab {PROJECT['version']}\n"
    r = cli("info", "--preset", "tiny")
    assert r.returncode == 0 and '"total": 49632' in r.stdout, r.stderr
    bad = cli("info", "--preset", "nope")
    assert bad.returncode == 2 and "unknown preset 'nope'" in bad.stderr
    info_help = " ".join(cli("info", "--help").stdout.split())
    assert f"preset name: {', '.join(mtp_lab.PRESETS)} (default: course)" in info_help
    bench = " ".join(cli("bench", "--help").stdout.split())
    for shown in ("(default: 16)", "(default: 64)", "(default: 128)", "(default: [1, 2, 3, 4])", "(default: 1)",
                  '"ngram": prompt lookup'):
        assert shown in bench
