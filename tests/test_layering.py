"""Imports point one way: entry scripts -> Characters -> Utils, Networks, Optimizer; no cycles; the data package
knows nothing of the algorithm, and the job never imports the tools."""
import ast
from pathlib import Path

from conftest import ROOT

PACKAGES = ("Characters", "Utils", "Networks", "Optimizer")
HELPERS = ("Utils", "Networks", "Optimizer")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports() -> dict[str, set[str]]:
    """Every project module and the project modules it imports anywhere in its body (lazy imports too)."""
    modules = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:   # relative: resolve against this module's package
                    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                    base = ".".join(filter(None, [package, base]))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            found.update(t for t in targets if t in modules and t != name)
        graph[name] = found
    return graph


def test_helpers_never_import_the_roles():
    wrong = {name: sorted(d for d in deps if d.startswith("Characters"))
             for name, deps in project_imports().items() if name.startswith(HELPERS)}
    assert not {name: deps for name, deps in wrong.items() if deps}


def test_no_import_cycles():
    graph = project_imports()
    state: dict[str, str] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(trail[trail.index(dep):] + [node, dep]) if dep in trail
                              else f"{node} -> {dep}")
            elif dep not in state:
                visit(dep, trail + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles


def test_only_transport_imports_torch_distributed():
    users = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            if "torch.distributed" in text and "import" in text and path.name != "transport.py":
                tree = ast.parse(text)
                names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
                names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
                if any(n.startswith("torch.distributed") for n in names):
                    users.append(module_name(path))
    assert users == []


def test_the_data_package_imports_only_itself():
    """Utils.data is the bottom layer of the helpers: datasets, formats, partitions, nothing of the method."""
    wrong = {name: sorted(d for d in deps if not d.startswith("Utils.data"))
             for name, deps in project_imports().items() if name.startswith("Utils.data")}
    assert not {name: deps for name, deps in wrong.items() if deps}


def test_the_job_never_imports_the_tools():
    """Utils.tools (plot, replay) use the job's modules; no module of the job uses them."""
    wrong = {name: sorted(d for d in deps if d.startswith("Utils.tools"))
             for name, deps in project_imports().items() if not name.startswith("Utils.tools")}
    assert not {name: deps for name, deps in wrong.items() if deps}
