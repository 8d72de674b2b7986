"""Install files agree with each other and keep CUDA builds of torch out."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

try:
    import tomllib  # Python 3.11+
except ModuleNotFoundError:  # Python 3.10 (requires-python >= 3.10): tomli is the same parser
    tomllib = pytest.importorskip("tomli", reason="Python 3.10 reads pyproject.toml with tomli (pip install tomli)")

ROOT = Path(__file__).resolve().parents[1]


def pyproject_deps():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = list(data["project"]["dependencies"])
    for extra in data["project"]["optional-dependencies"].values():
        deps += extra
    return deps


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_deps = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))

    def norm(ds):
        return sorted(re.sub(r"\s+", "", d).lower() for d in ds)

    assert norm(pip_deps) == norm(pyproject_deps())


def test_torch_is_pinned_to_the_cpu_wheel_version():
    torch_specs = [d for d in pyproject_deps() if re.match(r"torch\b", d)]
    assert torch_specs == ["torch==2.13.0"], torch_specs


@pytest.mark.slow        # 4 s: two subprocesses import torch
def test_cli_info_runs():
    r = subprocess.run([sys.executable, "-m", "mtp_lab.cli", "info", "--preset", "tiny"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert '"total": 49632' in r.stdout
    bad = subprocess.run([sys.executable, "-m", "mtp_lab.cli", "info", "--preset", "nope"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "unknown preset 'nope'" in bad.stderr
