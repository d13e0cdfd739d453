"""The package's shape: folders are layers and every import points down them (no cycles, none hidden), no
module over 350 lines, no function over 60. Read by AST, so it holds for imports inside functions too."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "ppp_min"
# Bottom to top. A module may import its own layer (without cycles) and any layer below it.
LAYERS = {"knobs": 0, "machine": 0, "lm": 1, "weights": 2, "userville": 3, "rl": 4, "evals": 5, "run": 6,
          "sweep": 7, "bench": 7}
CLIS = ["train.py", "eval.py", "simulate.py", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "scripts").glob("*.py"))]


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(mod: str) -> int | None:
    parts = mod.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else -1  # ppp_min itself (__version__) is below all


def _imports(path: Path) -> set[str]:
    """Every ppp_min module a file imports, at any depth (``from ppp_min.x import y`` names module x.y when
    that is a module, else x)."""
    out, mod = set(), _module(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("ppp_min")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = mod.split(".")[: len(mod.split(".")) - node.level + (path.name == "__init__.py")]
                base = ".".join(pkg + ([node.module] if node.module else []))
            if base.startswith("ppp_min"):
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    out.add(sub if _exists(sub) else base)
    return out


def _exists(mod: str) -> bool:
    p = ROOT.joinpath(*mod.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _package_files():
    return sorted(PKG.rglob("*.py"))


def test_every_module_sits_in_a_layer():
    unplaced = [str(p) for p in _package_files() if _layer(_module(p)) is None]
    assert not unplaced, f"modules outside the layers {list(LAYERS)}: {unplaced}"


def test_imports_point_down_the_layers():
    up = []
    for p in _package_files():
        mod = _module(p)
        for dep in _imports(p):
            if _layer(dep) is not None and _layer(dep) > _layer(mod):
                up.append(f"{mod} -> {dep}")
    assert not up, "imports pointing up the layers: " + "; ".join(up)


def test_no_import_cycles():
    graph = {_module(p): {d for d in _imports(p) if d != _module(p)} for p in _package_files()}
    done, stack = set(), []

    def visit(m):
        if m in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
        if m in done:
            return
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            visit(d)
        stack.pop()
        done.add(m)
    for m in sorted(graph):
        visit(m)


def test_no_hidden_imports_or_reexports():
    """No importlib, no module-level __getattr__ (lazy re-exports), every name imported from where it is
    defined: a ``from ppp_min.x import n`` whose n x itself imports from elsewhere is a facade."""
    defined, imported = {}, {}
    for p in _package_files():
        tree = ast.parse(p.read_text())
        src = p.read_text()
        assert "importlib" not in src, f"{p}: importlib hides an import"
        names, froms = set(), set()
        for n in tree.body:
            if isinstance(n, (ast.FunctionDef, ast.ClassDef)):
                names.add(n.name)
                assert n.name != "__getattr__" or not isinstance(n, ast.FunctionDef), f"{p}: module __getattr__"
            elif isinstance(n, (ast.Assign, ast.AnnAssign)):
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target]):
                    names |= {x.id for x in ast.walk(t) if isinstance(x, ast.Name)}
            elif isinstance(n, ast.ImportFrom):
                froms |= {a.asname or a.name for a in n.names}
        defined[_module(p)], imported[_module(p)] = names, froms
    facades = []
    for p in [*_package_files(), *(ROOT / c for c in CLIS), *sorted((ROOT / "tests").glob("*.py"))]:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "") in defined:
                for a in node.names:
                    m = node.module
                    if a.name not in defined[m] and a.name in imported[m] and not _exists(f"{m}.{a.name}"):
                        facades.append(f"{p.relative_to(ROOT)}: {a.name} from {m}")
    assert not facades, "names imported through a module that only re-exports them: " + "; ".join(facades)


def test_module_and_function_sizes():
    big = []
    for p in [*_package_files(), *(ROOT / c for c in CLIS)]:
        src = p.read_text()
        if src.count("\n") > 350:
            big.append(f"{p.relative_to(ROOT)}: {src.count(chr(10))} lines")
        for n in ast.walk(ast.parse(src)):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60:
                big.append(f"{p.relative_to(ROOT)}: {n.name} is {n.end_lineno - n.lineno + 1} lines")
    assert not big, "; ".join(big)
