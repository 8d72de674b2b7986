"""Shared fixtures (pytest finds them here; test modules do not import them).

sample_root  - a small copy of real standard-library files with files in every split (tests/stdlib_sample.py)
corpus       - that sample tokenized with a byte-level BPE of the module's VOCAB tokens (test_train, test_distill)
one_thread   - torch on one thread for the module: tiny models run faster, a shared machine does not stall them
no_long_work - loading a corpus or a model, or measuring anything, fails the test (CLI checks must come first)
device       - the torch device of the model, loss, FP8, decoding and training tests: cpu, or what
               `--torch-device cuda` (or MTP_LAB_TEST_DEVICE=cuda) asks for (tools/gpu_check.py runs them so)
"""

from __future__ import annotations

import os

import pytest
import torch
from stdlib_sample import make_sample_root, sample_tokenizer

VOCAB = 320   # the corpus fixture's vocabulary, unless the test module sets its own VOCAB
DEVICE_ENV = "MTP_LAB_TEST_DEVICE"


def pytest_addoption(parser):
    parser.addoption("--torch-device", default=os.environ.get(DEVICE_ENV, "cpu"),
                     help=f"torch device for the tests that take the `device` fixture (default: ${DEVICE_ENV} or cpu)")


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    """The device asked for; one that this machine does not have stops the session with one line."""
    name = request.config.getoption("--torch-device")
    try:
        dev = torch.device(name)
        torch.empty(1, device=dev)
    except (RuntimeError, AssertionError) as e:   # torch's own message: no such device, or torch built without CUDA
        pytest.exit(f"--torch-device {name!r} (or ${DEVICE_ENV}) is not usable here: {e}", returncode=4)
    return dev


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory):
    """The sample corpus folder, copied once per session (tests only read it)."""
    return make_sample_root(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def corpus(request, sample_root):
    """The sample encoded with a BPE of the module's VOCAB (else 320) tokens, trained on its train split;
    the stream cache is not used."""
    from mtp_lab.data import build_corpus

    vocab = getattr(request.module, "VOCAB", VOCAB)
    return build_corpus(sample_tokenizer(sample_root, vocab), root=sample_root, use_cache=False)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread, and a shared machine does not stall them on thread sync."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_long_work(monkeypatch):
    """Loading a corpus or a model, or measuring anything, fails the test: the checks must come first."""
    import mtp_lab.bench
    import mtp_lab.checkpoint
    import mtp_lab.data
    import mtp_lab.fp8_bench

    def boom(*args, **kwargs):
        raise AssertionError("long work started before the bad input was refused")
    for module, name in ((mtp_lab.data, "build_corpus"), (mtp_lab.checkpoint, "load_pretrained"),
                         (mtp_lab.bench, "heldout_prompts"), (mtp_lab.bench, "random_setup"),
                         (mtp_lab.fp8_bench, "quantization_table")):
        monkeypatch.setattr(module, name, boom)
