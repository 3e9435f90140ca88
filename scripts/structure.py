"""Structure figures of the ``exporter`` package: modules, import arrows, cycles, lazy imports,
the longest functions. ``python scripts/structure.py [root]``."""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(current: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = current.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "exporter").resolve()
    files = [p for p in sorted(root.rglob("*.py")) if "migrations" not in p.parts]
    modules = {module_name(root, p): p for p in files}
    arrows: dict[str, set[str]] = defaultdict(set)
    lazy: list[str] = []
    functions: list[tuple[int, str]] = []
    lines = 0
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        lines += len(path.read_text().splitlines())
        is_pkg = path.name == "__init__.py"
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = resolve(name, is_pkg, node)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    span = (node.end_lineno or node.lineno) - node.lineno + 1
                    functions.append((span, f"{name}.{node.name}"))
                continue
            hits = {t for t in targets if t in modules and t != name}
            # a name imported from a package is that package unless it is a submodule
            hits = {
                h for h in hits if not any(o != h and o.startswith(h + ".") for o in hits)
            } or hits
            if not hits:
                continue
            guarded = False
            if id(node) not in top:
                # inside a function or TYPE_CHECKING block
                guarded = True
            for h in hits:
                arrows[name].add(h)
            if guarded:
                lazy.append(f"{name} -> {', '.join(sorted(hits))} (line {node.lineno})")
    n_arrows = sum(len(v) for v in arrows.values())
    # strongly connected components (Tarjan)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    sccs: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in arrows.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in modules:
        if v not in index:
            visit(v)
    packages = sorted({m.rsplit(".", 1)[0] for m in modules if m.count(".") >= 1})
    print(f"modules: {len(modules)} ({lines:,} lines) in {len(packages)} packages")
    biggest = sorted(
        ((len(p.read_text().splitlines()), m) for m, p in modules.items()), reverse=True
    )
    print("largest modules: " + ", ".join(f"{m} {n}" for n, m in biggest[:5]))
    print(f"import arrows between modules: {n_arrows}")
    print(f"import cycles (strongly connected groups): {len(sccs)}")
    for comp in sccs:
        print("  " + " <-> ".join(comp))
    print(f"imports inside functions or blocks: {len(lazy)}")
    for line in lazy:
        print("  " + line)
    functions.sort(reverse=True)
    print("longest functions: " + ", ".join(f"{n} ({s} lines)" for s, n in functions[:8]))


if __name__ == "__main__":
    main()
