"""nbval settings for the course notebooks: stderr (warnings carry kernel-specific /tmp paths) is never compared."""


def pytest_collectstart(collector):
    if hasattr(collector, "skip_compare"):   # nbval's IPyNbFile, one per notebook
        collector.skip_compare += ("stderr",)
