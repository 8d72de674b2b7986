"""The tree view's plain-function core (mtp_lab.viz.tree.tree_layout) by hand, and the view on a tiny model."""

from types import SimpleNamespace

import pytest
import torch

from mtp_lab import MTPModel, get_preset
from mtp_lab.viz.tree import tree_layout, tree_view

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tree_layout_by_hand():
    # root -> a (0), b (1); a -> c (2), d (3); d -> e (4). Accepted path a, d; then the target's token 9 (corrected)
    step = SimpleNamespace(draft_tokens=[10, 11, 12, 13, 14], parents=[-1, -1, 0, 0, 3], path=[0, 3],
                           sources=["mtp+ngram", "mtp", "mtp", "ngram", "ngram"], next_token=9, is_bonus=False)
    lay = tree_layout(step, mtp_depth=1)
    assert lay["status"] == ["root", "accepted", "rejected", "rejected", "accepted", "rejected", "corrected"]
    assert lay["x"] == [0, 1, 1, 2, 2, 3, 3]                          # depth; the corrected token under d
    assert lay["token"] == [None, 10, 11, 12, 13, 14, 9]
    assert lay["module"] == [None, 1, 1, 1, None, None, None]         # module min(depth, D) for MTP nodes only
    assert sorted(lay["edges"]) == [(0, 1), (0, 2), (1, 3), (1, 4), (4, 5), (4, 6)]
    # leaves in depth-first order get y = 0, 1, 2, ...; a parent sits at the mean of its children
    y = lay["y"]
    assert (y[3], y[5], y[6], y[2]) == (0.0, 1.0, 2.0, 3.0)
    assert y[4] == 1.5 and y[1] == (0.0 + 1.5) / 2 and y[0] == (y[1] + y[2]) / 2
    # a miss at the root: every node is rejected or not reached, the token hangs under the root
    miss = SimpleNamespace(**{**vars(step), "path": []})
    lay = tree_layout(miss, mtp_depth=1)
    assert lay["status"][1:6] == ["rejected", "rejected", "not reached", "not reached", "not reached"]
    assert lay["edges"][-1] == (0, 6) and lay["x"][-1] == 1


def test_tree_view_steps_on_a_tiny_model():
    torch.manual_seed(0)
    model = MTPModel(get_preset("tiny", vocab_size=256)).eval()

    class Bytes:
        def encode(self, text):
            return list(text.encode())

        def decode(self, ids):
            return bytes(ids).decode(errors="replace")

    view = tree_view(model, Bytes(), prompt="abcabcabc", drafter="hybrid", num_draft=4, interactive=False)
    before = view.stats.main_forwards
    view.advance()
    view.draw()
    assert view.stats.main_forwards == before + 1 and view.layout is not None
    names = [t.name for t in view.fig.data[1:]]
    assert names == ["root", "accepted", "rejected", "not reached", "corrected", "bonus"]
    assert sum(len(t.x) for t in view.fig.data[1:]) == len(view.layout["x"])   # every node drawn once
    assert "tau" in view.status.value
