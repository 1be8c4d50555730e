"""What a deployment needs, checked offline: the bindings' settings, the deployed sample config, and
that every config format works with the runtime requirements alone."""
import fnmatch
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

from shared.core.config import load_config
from shared.core.settings import BINDING_SETTINGS

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]


def binding_settings() -> tuple[set[str], set[str]]:
    """(%SETTING% names, connection names) of every binding, read from the Function objects.

    `get_functions()` may be called once per app object, so function_app.py is loaded afresh here.
    """
    spec = importlib.util.spec_from_file_location("function_app_for_bindings", ROOT / "function_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expressions, connections = set(), set()
    for function in module.app.get_functions():
        for binding in function.get_bindings():
            for key, value in binding.get_dict_repr().items():
                if isinstance(value, str):
                    expressions |= set(re.findall(r"%([^%]+)%", value))
                    if key == "connection":
                        connections.add(value)
    return expressions, connections


def test_every_binding_setting_is_defined_in_the_sample_settings():
    expressions, connections = binding_settings()
    assert expressions == set(BINDING_SETTINGS)  # what health checks and infra/ must set
    for name in expressions | connections:
        assert SAMPLE.get(name), f"{name} is used by a binding but not set in local.settings.sample.json"


def funcignored(path: str) -> bool:
    """Whether .funcignore (gitignore-style patterns) keeps `path` out of the package."""
    parts = Path(path).parts
    for pattern in (ROOT / ".funcignore").read_text().split():
        directory = pattern.endswith("/")
        pattern = pattern.rstrip("/")
        candidates = parts[:-1] if directory else parts
        prefixes = ["/".join(parts[:i + 1]) for i in range(len(candidates))]
        if any(fnmatch.fnmatch(part, pattern) for part in candidates) or pattern in prefixes:
            return True
    return False


def test_the_sample_settings_point_at_a_config_that_is_deployed():
    path = SAMPLE["SYNC_CONFIG"]
    assert (ROOT / path).is_file() and not funcignored(path)
    assert load_config(path).mappings
    assert funcignored("tests/unit/x.py") and funcignored("local.settings.json")  # the matcher works


RUNTIME_IMPORTS = r"""
import sys
at_start = set(sys.modules)  # the interpreter's own start-up (site hooks) is not the app's doing
import importlib.metadata as md, json, tempfile, pathlib
from shared.core.config import load_config
sample = pathlib.Path("config/sync-config.yaml")
text = sample.read_text()
folder = pathlib.Path(tempfile.mkdtemp())
for name in ("c.yml", "c.yaml"):
    (folder / name).write_text(text)
    load_config(str(folder / name))
as_json = json.dumps(load_config(str(sample)).to_dict())
(folder / "c.json").write_text(as_json)
load_config(str(folder / "c.json")); load_config(as_json); load_config(text)
import function_app, shared.app, shared.handlers.http_api, shared.handlers.onboarding, shared.handlers.health
from shared.core.settings import Settings
from shared.adapters.telemetry import for_settings
settings = Settings.from_env({"SYNC_CONFIG": "c"})
for_settings(settings.app_insights, settings.worker_telemetry)
files = {str(pathlib.Path(m.__file__).resolve()) for n, m in list(sys.modules.items())
         if n not in at_start and getattr(m, "__file__", None)}
owners = set()
for dist in md.distributions():  # by file, because namespace packages (azure.*) span many distributions
    root = str(pathlib.Path(dist.locate_file("")).resolve()) + "/"
    record = dist.read_text("RECORD") or ""
    if any(root + line.split(",", 1)[0] in files for line in record.splitlines() if ".py," in line):
        owners.add(dist.metadata["Name"])
print(json.dumps(sorted(owners)))
"""


def requirement_closure(path: Path) -> set[str]:
    """The distributions that `pip install -r path` brings: the pinned names and what they require."""
    import importlib.metadata as md
    from packaging.requirements import Requirement

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    todo = [Requirement(line.split("#")[0]).name for line in path.read_text().splitlines()
            if line.split("#")[0].strip() and not line.startswith("-")]
    seen: set[str] = set()
    while todo:
        name = norm(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for spec in map(Requirement, requires):
            if spec.marker is None or spec.marker.evaluate({"extra": ""}):
                todo.append(spec.name)
    return seen


def test_every_config_format_loads_with_the_runtime_requirements_alone():
    """The import graph of loading JSON and YAML configs (file and inline) and of every entry point
    stays inside requirements.txt and what it requires: a module of a dev-only package would be a
    ModuleNotFoundError once deployed. (Checked once by hand in a fresh venv with only
    requirements.txt installed; this keeps it checked without a 500 MB install per run.)"""
    out = subprocess.run([sys.executable, "-c", RUNTIME_IMPORTS], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    loaded = {re.sub(r"[-_.]+", "-", d).lower() for d in json.loads(out)}
    allowed = requirement_closure(ROOT / "requirements.txt")
    assert "pyyaml" in loaded
    assert "azure-monitor-opentelemetry" not in loaded  # without Application Insights, telemetry costs nothing
    assert loaded <= allowed, f"imported from packages not in requirements.txt: {sorted(loaded - allowed)}"
