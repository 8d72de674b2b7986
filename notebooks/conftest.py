"""nbval settings for the course notebooks: stderr (warnings carry kernel-specific /tmp paths) is never compared,
and the kernels (which inherit this environment) run exercise checks strictly: a solution cell whose answer is
wrong raises (solution cells store no output, so nbval has nothing to compare them with); the %%solution cells,
which a learner's Run All skips, run here."""

import os

os.environ["MTP_LAB_STRICT_CHECKS"] = "1"
os.environ["MTP_LAB_RUN_SOLUTIONS"] = "1"   # the %%solution cells run (a learner's Run All skips them)


def pytest_collectstart(collector):
    if hasattr(collector, "skip_compare"):   # nbval's IPyNbFile, one per notebook
        collector.skip_compare += ("stderr",)
