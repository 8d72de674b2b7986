"""The course's colours: one colour per meaning, the same in every view and notebook.

Every colour of mtp_lab.viz comes from this module (tests/test_viz.py fails on a colour literal anywhere else).
The hues are Okabe and Ito's colour-blind-safe set, with a few of Paul Tol's where it runs out:

    main model, target p, plain (AR) decoding   blue            the model that decides
    MTP depth k (module k), drafter q           purple family   depth 1 = the drafter; deeper = darker
    accepted / rejected / corrected / bonus     green / vermillion / orange / sky blue (speculative decoding)
    E4M3 / E5M2                                 indigo / teal (FP8 formats)

`COURSE` lists those meanings; no two share a colour. `LOCAL` colours have a meaning inside one view only
(RMSNorm in/out, lambda and learning rate, ...) and may repeat a hue of another view. `tint` gives the light
background version of a colour (token marks, architecture boxes).
"""

from __future__ import annotations

OKABE_ITO = {"black": "#000000", "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73", "yellow": "#F0E442",
             "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7", "grey": "#999999"}
TOL = {"wine": "#882255", "indigo": "#332288", "teal": "#44AA99", "olive": "#999933", "rose": "#CC6677",
       "green": "#117733", "brown": "#661100"}

# MTP depth k is DEPTHS[k - 1] (cycling beyond 4): the purple family, darker with depth
DEPTHS = (OKABE_ITO["purple"], TOL["wine"], TOL["brown"], TOL["indigo"])

COURSE = {
    "main": OKABE_ITO["blue"],             # main model: L_main, target distribution p, plain decoding
    "depth 1": DEPTHS[0],
    "depth 2": DEPTHS[1],
    "accepted": OKABE_ITO["green"],        # a draft the target kept
    "rejected": OKABE_ITO["vermillion"],   # the first draft the target refused (shown, not kept)
    "corrected": OKABE_ITO["orange"],      # sampled from norm(max(0, p - q)) after a rejection
    "bonus": OKABE_ITO["sky"],             # every draft kept: one more token from p
    "e4m3": TOL["indigo"],
    "e5m2": TOL["teal"],
}
ALIASES = {                                # the same thing under another name: the same colour
    "target": "main",                      # p_j(d_j), the target model's probability
    "autoregressive": "main",              # plain decoding runs the main model only
    "draft": "depth 1",                    # q_j(d_j): MTP module 1 drafts (chained for j > D)
    "speculative": "depth 1",              # the run that drafts
}
NEUTRAL = {
    "reference": OKABE_ITO["black"],       # theory curves, thresholds, the value being looked at
    "muted": OKABE_ITO["grey"],            # context: total loss, model defaults, published points
    "ink": "#444444",                      # outlines and arrows
    "text_muted": "#666666",               # the prompt in generated text
    "plain": "#DDDDDD",                    # a token sampled without drafting (prefill, k = 0)
    "error": "#B00020",                    # a rejected input in a status line
    "background": "#FFFFFF",
    "transparent": "rgba(0,0,0,0)",
}
LOCAL = {
    "lambda": OKABE_ITO["black"],          # training monitor: MTP weight lambda
    "learning rate": TOL["olive"],
    "norm in": TOL["rose"],                # RMSNorm: vectors entering the norm
    "norm out": TOL["green"],              # ... and leaving it
    "highlight": OKABE_ITO["yellow"],      # the selected item of a list
    "accumulator limited": OKABE_ITO["vermillion"],   # FP8 accumulation: ~14-bit accumulator only
    "accumulator promoted": OKABE_ITO["green"],       # promoted to FP32 every N_C
    "accumulator fp32": OKABE_ITO["black"],
    "measured": OKABE_ITO["vermillion"],   # speed-up lab: this model's bench point
    "measured other": OKABE_ITO["orange"], # ... another model's
    "shared": TOL["teal"],                 # architecture: shared embedding and head
    "norm": OKABE_ITO["yellow"],           # architecture: RMSNorm boxes
}
HEATMAP = "Cividis"                        # a colour-blind-safe sequential scale

COLORS = {**COURSE, **{k: COURSE[v] for k, v in ALIASES.items()}, **NEUTRAL, **LOCAL}


def color(name: str) -> str:
    """The colour of a meaning: a COURSE name, an alias, a NEUTRAL or LOCAL name, or "depth k" for any k >= 1."""
    if name in COLORS:
        return COLORS[name]
    if name.startswith("depth ") and name[6:].isdigit() and int(name[6:]) >= 1:
        return depth_color(int(name[6:]))
    raise KeyError(f"no colour for {name!r}; palette names: {sorted(COLORS)} or 'depth k'")


def depth_color(k: int) -> str:
    """MTP depth k (k = 1 is the first MTP module, the drafter)."""
    if k < 1:
        raise ValueError(f"MTP depths start at 1, got {k}")
    return DEPTHS[(k - 1) % len(DEPTHS)]


def tint(name_or_hex: str, alpha: float = 0.3) -> str:
    """A palette colour (name or "#RRGGBB") at opacity `alpha`, as CSS/plotly "rgba(r,g,b,a)"."""
    hex_ = name_or_hex if name_or_hex.startswith("#") else color(name_or_hex)
    r, g, b = (int(hex_[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha:g})"
