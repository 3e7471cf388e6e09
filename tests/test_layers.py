"""The package's modules import only downward: no cycles, no lower layer reaching up (lazy imports too)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dprope_kernels"

# lowest first; a module may import its own layer (without cycles) and the layers below
LAYERS = [
    # errors: the package's error classes; files: whole-or-nothing writes, directory locks;
    # provenance: the package's own commit
    {"errors", "phase", "strategies", "cuda", "parallel", "files", "provenance"},
    {"backends"},
    {"triton"},  # triton.*
    {"ops", "rmsnorm"},  # ops.*; q/k norms the fused op applies
    {"planner"},
    {"hf_config"},  # the one reader of model configs
    {"modules"},
    {"integrations"},  # integrations.*
    {"export"},  # formats other engines load (no argparse)
    {"commands", "__main__"},  # the tools wing: commands.* (plan, compare/, export, info, aot, figures)
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str) -> int:
    top = name.split(".")[0]
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    raise AssertionError(f"dprope_kernels.{name} has no layer: add it to LAYERS in {__file__}")


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports anywhere in it (function-level imports included)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "dprope_kernels":
                target = node.module.partition(".")[2]
            else:
                continue
            for alias in node.names:  # `from . import phase` names a module
                sub = f"{target}.{alias.name}" if target else alias.name
                if sub in modules:
                    found.add(sub)
                elif target in modules:
                    found.add(target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "dprope_kernels":
                    sub = alias.name.partition(".")[2]
                    if sub in modules:
                        found.add(sub)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    # the package root resolves names lazily (importlib) and is imported with every submodule: not an edge
    return {name: imports_of(path, modules) - {""} for name, path in paths.items() if name}


def test_every_module_imports_only_its_own_layer_or_below():
    edges = graph()
    upward = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
              for a, targets in sorted(edges.items()) for b in sorted(targets) if layer_of(b) > layer_of(a)]
    assert not upward, "lower layers import higher ones:\n" + "\n".join(upward)


def test_there_is_no_import_cycle():
    edges = graph()
    state, stack, cycles = {}, [], []

    def visit(name):
        state[name] = "open"
        stack.append(name)
        for target in sorted(edges.get(name, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[name] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_walk_sees_lazy_imports():
    edges = graph()
    assert "hf_config" in edges["modules"]  # DPRoPERotaryEmbedding.from_config imports it inside the method
    assert "ops.rope" in edges["modules"] and "planner" in edges["hf_config"]
    assert "triton.rope" in edges["ops.rope"]
