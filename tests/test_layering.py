"""The package's imports run one way: no module of mtp_lab imports (at top level or inside a function) a module
that imports it back, directly or through others, and no module imports one of a higher layer (LAYERS; the
diagram in CONTRIBUTING.md). The package root (mtp_lab/__init__.py), a facade that imports the public names of
everything, is left out of the graph."""

import ast
from pathlib import Path

import mtp_lab

ROOT = Path(mtp_lab.__file__).parent

# bottom to top; a module may import modules of its own layer or below. "viz" stands for every mtp_lab.viz module,
# "commands" for every mtp_lab.commands module. A new module fails test_every_import_goes_down until placed here.
LAYERS = [
    {"config", "exercises"},                       # the config dataclass and its checks; the exercise framework
    {"layers", "fp8", "sampling", "data"},         # RMSNorm/attention/SwiGLU; FP8 formats; sampling; corpus, files
    {"fp8_linear"},                                # the FP8 linear layer and recipe
    {"model"},                                     # main model + MTP modules
    {"loss", "checkpoint", "drafters", "tree"},    # the MTP loss; safetensors checkpoints; drafters; tree drafts
    {"decoding"},                                  # generation and speculative decoding
    {"train", "distill", "proportion", "bench", "stopping"},   # training, distillation, cost model, benchmarks,
                                                                # the adaptive draft length's bound
    {"metrics", "fp8_bench"},                      # export + metrics of a run; the FP8 benchmark
    {"viz"},                                       # widgets and figures
    {"course_checks", "course"},                   # the notebooks' helpers and exercise checks
    {"commands", "cli"},                           # the command line, above everything
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules] or [target]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mtp_lab"):
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("mtp_lab")]
            graph[name] |= {t for t in targets if t in modules and t != "mtp_lab" and t != name}
    graph.pop("mtp_lab")
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle as a list of modules, or None (depth-first search with three colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert {"mtp_lab.model", "mtp_lab.decoding", "mtp_lab.viz.speedup"} <= set(graph)
    assert "mtp_lab.layers" in graph["mtp_lab.model"]                     # the graph sees real edges
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def layer_of(module: str) -> int:
    short = module.removeprefix("mtp_lab.")
    group = short.split(".")[0] if short.startswith(("viz", "commands")) else short
    found = [i for i, names in enumerate(LAYERS) if group in names]
    assert found, f"{module} is in no layer: add it to LAYERS in tests/test_layering.py (and CONTRIBUTING.md)"
    return found[0]


def test_every_import_goes_down():
    graph = import_graph()
    upward = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
              for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a)]
    assert not upward, "\n".join(upward)
    assert layer_of("mtp_lab.commands.train") > layer_of("mtp_lab.train") > layer_of("mtp_lab.model")
