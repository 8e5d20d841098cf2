"""The import graph: which layer may import which, read from the source with `ast`.

Data flows one way: the agent (agent.py, conversation.py) wires everything; the
interfaces (functions/ for SWAIG, api/ for HTTP, web/ for the live page) call the
engine; the engine decides, on settings from config/; server/ is the HTTP edge
under every interface. Every import counts, including those inside functions and
under ``TYPE_CHECKING``: a cycle hidden from the interpreter is still a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PACKAGES = ("config", "engine", "functions", "api", "web", "server", "languages")
# The agent wires the layers; nothing imports it. The SDK adapter is the agent's one door
# to the SDK's internals, below the agent only.
TOP_LEVEL = ("agent", "conversation", "sdk_adapter")
LAYERS = PACKAGES + TOP_LEVEL
# What uses the layers and is never used by them.
TOOLING = ("bench", "tests", "deploy", "examples", "scripts")

# What each layer must never import, and why, in the words a failure prints.
RULES: dict[str, tuple[frozenset[str], str]] = {
    "config": (frozenset(), "config depends on nothing of ours"),
    "languages": (frozenset(), "languages depends on nothing of ours"),
    "server": (frozenset({"config"}), "server (the HTTP edge) imports only config"),
    "engine": (
        frozenset({"config", "languages"}),
        "the engine never imports an interface (functions, api, web), the HTTP edge or the agent",
    ),
    "functions": (
        frozenset({"config", "engine", "server", "languages"}),
        "functions, api and web never import each other (nor the agent)",
    ),
    "api": (
        frozenset({"config", "engine", "server", "languages"}),
        "functions, api and web never import each other (nor the agent)",
    ),
    "web": (
        frozenset({"config", "engine", "server", "languages"}),
        "functions, api and web never import each other (nor the agent)",
    ),
    "conversation": (
        frozenset({"config", "engine", "functions", "languages"}),
        "the conversation reads the functions' steps and the texts, nothing above them",
    ),
    "sdk_adapter": (frozenset({"server"}), "the SDK adapter leans on the SDK and the error shape only"),
    "agent": (frozenset(PACKAGES) | {"conversation", "sdk_adapter"}, "the agent may wire every layer"),
}


@dataclass(frozen=True)
class Import:
    """One import statement of ours: where it is and which layer it reaches."""

    source: str  # the file, relative to the repository
    line: int
    module: str  # the imported module, absolute
    importer: str  # the layer the file belongs to
    imported: str  # the layer the module belongs to

    def __str__(self) -> str:
        return f"{self.source}:{self.line} imports {self.module} ({self.importer} -> {self.imported})"


def ours() -> frozenset[str]:
    """Every top-level module or folder of Python in this repository: what "of ours" means."""
    names = {path.stem for path in ROOT.glob("*.py")}
    names |= {path.parent.name for path in ROOT.glob("*/*.py") if not path.parent.name.startswith(".")}
    return frozenset(names)


def layer_files() -> dict[str, list[Path]]:
    """The Python files of each layer."""
    files = {package: sorted((ROOT / package).rglob("*.py")) for package in PACKAGES}
    files.update({module: [ROOT / f"{module}.py"] for module in TOP_LEVEL})
    return files


def imported_modules(path: Path, root: Path = ROOT) -> Iterable[tuple[int, str]]:
    """Every module ``path`` imports, absolute (relative imports resolved), with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = list(path.relative_to(root).parent.parts)  # what a relative import starts from
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield node.lineno, module


def import_graph(files: Mapping[str, Iterable[Path]], names: frozenset[str]) -> list[Import]:
    """Every import from one of ``files``' layers into a module of ours."""
    found = []
    for layer, paths in files.items():
        for path in paths:
            for line, module in imported_modules(path):
                top = module.split(".")[0]
                if top in names:
                    source = str(path.relative_to(ROOT))
                    found.append(Import(source, line, module, layer, top))
    return found


def broken_rules(imports: Iterable[Import]) -> list[str]:
    """Each import a layer's rule forbids, with the rule, one line each."""
    broken = []
    for edge in imports:
        if edge.imported == edge.importer:
            continue
        allowed, rule = RULES[edge.importer]
        if edge.imported not in allowed:
            broken.append(f"{edge}: {rule}")
    return broken


def cycles(imports: Iterable[Import]) -> list[list[str]]:
    """The cycles among layers, each as the path that closes it (a -> b -> a)."""
    edges: dict[str, set[str]] = {}
    for edge in imports:
        if edge.imported != edge.importer:
            edges.setdefault(edge.importer, set()).add(edge.imported)
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(layer: str, path: list[str]) -> None:
        if layer in path:
            found.append([*path[path.index(layer) :], layer])
            return
        if layer in done:
            return
        for target in sorted(edges.get(layer, ())):
            visit(target, [*path, layer])
        done.add(layer)

    for layer in sorted(edges):
        visit(layer, [])
    return found


def _explain(problems: Iterable[str]) -> str:
    return "the layers leak:\n  " + "\n  ".join(problems)


# -- the repository ----------------------------------------------------------


def test_every_module_of_ours_is_a_layer_with_a_rule_or_tooling() -> None:
    unplaced = sorted(ours() - set(LAYERS) - set(TOOLING))
    assert not unplaced, (
        f"{', '.join(unplaced)}: neither a layer nor tooling; "
        "place it in tests/test_architecture.py (LAYERS and RULES, or TOOLING)"
    )
    assert set(RULES) == set(LAYERS)
    # A renamed or emptied package would make the rules below pass without checking anything.
    assert all(layer_files().values()), [layer for layer, files in layer_files().items() if not files]


def test_each_layer_imports_only_what_its_rule_allows() -> None:
    broken = broken_rules(import_graph(layer_files(), ours()))
    assert not broken, _explain(broken)


def test_no_layer_imports_the_tooling() -> None:
    outside = [
        f"{edge}: {edge.imported} is tooling"
        for edge in import_graph(layer_files(), ours())
        if edge.imported in TOOLING
    ]
    assert not outside, _explain(outside)


def test_no_cycle_among_the_layers() -> None:
    found = cycles(import_graph(layer_files(), ours()))
    assert not found, _explain(" -> ".join(cycle) for cycle in found)


# -- the checks themselves: each catches what it is for ---------------------


def _edge(importer: str, module: str) -> Import:
    return Import(f"{importer}/x.py", 1, module, importer, module.split(".")[0])


def test_a_leak_is_reported_with_the_file_the_line_and_the_rule() -> None:
    leaks = [
        _edge("config", "engine.codes"),
        _edge("engine", "api.errors"),
        _edge("web", "api.auth"),
        _edge("api", "functions.platform"),
        _edge("server", "engine.errors"),
        _edge("languages", "config.settings"),
        _edge("engine", "agent"),
    ]
    allowed = [_edge("api", "engine.runtime"), _edge("server", "config"), _edge("engine", "engine.models")]

    broken = broken_rules([*leaks, *allowed])

    assert len(broken) == len(leaks), broken
    assert broken[0] == (
        "config/x.py:1 imports engine.codes (config -> engine): config depends on nothing of ours"
    )
    assert "functions, api and web never import each other" in broken[2]


def test_a_cycle_is_reported_as_its_path() -> None:
    edges = [_edge("engine", "config"), _edge("config", "server.auth"), _edge("server", "engine.models")]
    assert cycles(edges) == [["config", "server", "engine", "config"]]
    assert cycles(edges[:2]) == []


def test_every_kind_of_import_is_read(tmp_path: Path) -> None:
    package = tmp_path / "engine" / "stores"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from .base import Store\n")
    (package / "sqlite.py").write_text(
        "import api.errors\n"
        "from . import windows\n"
        "from ..models import Status\n"
        "def late():\n"
        "    from web.live import build_routes\n"
    )

    assert list(imported_modules(package / "__init__.py", tmp_path)) == [(1, "engine.stores.base")]
    assert sorted(name for _, name in imported_modules(package / "sqlite.py", tmp_path)) == [
        "api.errors",
        "engine.models",
        "engine.stores",
        "web.live",
    ]
