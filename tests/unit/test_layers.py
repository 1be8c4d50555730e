"""The folders are the architecture: each layer of `shared/` may import only the layers below it.

core     ← nothing else of the app (and no SDK: it is pure)
adapters ← core (and sibling adapters' storage plumbing)
engine   ← core, adapters
handlers ← core, adapters, engine, and the wiring in `shared/app.py`
app      ← everything but the handlers

Read from the source with `ast`, lazy imports inside functions included, so a forbidden import
fails here with its file and line, whether or not any test happens to execute it."""
import ast
import sys
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
LAYERS = ("core", "adapters", "engine", "handlers")
ALLOWED = {
    "core": {"core"},
    "adapters": {"core", "adapters"},
    "engine": {"core", "adapters", "engine"},
    "handlers": {"core", "adapters", "engine", "handlers", "app"},
    "app": {"core", "adapters", "engine", "app"},
}
# What a pure module may import besides the standard library and the core itself: idna is a pure
# codec, and yaml is the optional config parser (no I/O of its own).
PURE_THIRD_PARTY = {"idna", "yaml"}


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "shared" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in LAYERS else ("app" if parts[1] == "app" else None)


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from shared import app` names a module in its alias, not in `module`.
            found += [(node.lineno, f"{node.module}.{alias.name}" if node.module == "shared" else node.module)
                      for alias in node.names]
    return found


def _modules():
    for path in sorted(SHARED.rglob("*.py")):
        relative = path.relative_to(SHARED)
        layer = relative.parts[0] if len(relative.parts) > 1 else ("app" if relative.stem == "app" else None)
        if layer is not None:
            yield layer, path


def test_every_module_sits_in_a_layer():
    loose = [p.name for p in SHARED.glob("*.py") if p.stem not in {"__init__", "__main__", "app"}]
    assert loose == [], f"modules outside the four layers: {loose}"


@pytest.mark.parametrize(("layer", "path"), list(_modules()), ids=lambda v: getattr(v, "name", v))
def test_a_module_imports_only_the_layers_below_it(layer, path):
    forbidden = [f"{path.relative_to(SHARED.parent)}:{line} imports {module} ({_layer_of(module)})"
                 for line, module in _imports(path)
                 if _layer_of(module) is not None and _layer_of(module) not in ALLOWED[layer]]
    assert forbidden == []


@pytest.mark.parametrize("path", sorted((SHARED / "core").glob("*.py")), ids=lambda p: p.name)
def test_the_core_imports_no_sdk(path):
    outside = [f"{path.name}:{line} imports {module}" for line, module in _imports(path)
               if module.split(".")[0] not in sys.stdlib_module_names | PURE_THIRD_PARTY | {"shared"}]
    assert outside == []
