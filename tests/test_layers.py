"""The layer rule: a lower layer never imports a higher one (read from the source).

Every module of the package is parsed (not imported) and each ``import``
of another imagefs module is checked against the layer table below, which
is the one of docs/ARCHITECTURE.md.  Only the FUSE package may import
mfusepy.  No module grows beyond about 500 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "imagefs"

#: Layer of each top-level part of the package, lowest first.  Modules of
#: one rank may import each other only inside the same part.
LAYERS = {
    "errors": 0, "records": 0, "version": 0, "config": 0, "services": 0,
    "io": 1,
    "codecs": 2,
    "formats": 3,
    "blockio": 4,
    "files": 5, "disks": 5,
    "catalog": 6,
    "fuse": 7,
    "cli": 8, "api": 8, "__init__": 9, "__main__": 9,
}
MAX_LINES = 520


def _part(module: str) -> str:
    """``imagefs.codecs.zstd`` -> ``codecs``; ``imagefs`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: Path, known: set[str]) -> set[str]:
    """Modules ``path`` imports (``from pkg import submodule`` names the submodule)."""
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}: use absolute imports"
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else str(node.module))
    return found


def test_every_part_has_a_layer():
    parts = {_part(m) for m in _modules()}
    assert parts <= set(LAYERS), f"add {sorted(parts - set(LAYERS))} to LAYERS"


def test_no_lower_layer_imports_a_higher_one():
    problems = []
    modules = _modules()
    for module, path in modules.items():
        mine = _part(module)
        for target in _imports(path, set(modules)):
            if target == "mfusepy" and mine != "fuse":
                problems.append(f"{module} imports mfusepy (only imagefs.fuse may)")
            if not target.startswith("imagefs"):
                continue
            theirs = _part(target)
            if theirs == mine:
                continue
            if LAYERS[theirs] > LAYERS[mine] or (LAYERS[theirs] == LAYERS[mine]
                                                 and LAYERS[mine] > 0):
                problems.append(f"{module} (layer {mine}) imports {target} (layer {theirs})")
    assert not problems, "\n".join(problems)


def test_modules_stay_small():
    big = {m: n for m, p in _modules().items()
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"split these modules: {big}"
