"""The kit (every module directly in perfkit/ and in perfkit/benchmarks/) imports nothing from the workload
(perfkit.workload) or the notebook suite (perfkit.suite), at module level or inside functions."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "perfkit"
KIT = sorted([*PACKAGE.glob("*.py"), *(PACKAGE / "benchmarks").glob("*.py")])
FORBIDDEN = ("perfkit.workload", "perfkit.suite")
# Kit modules whose job is to drive the workload, and so import it (lazily) by design: the command line
# (`perfkit embed`, `perfkit predict`, `perfkit synth`, `perfkit suite` dispatch to the pipeline and the
# suite) and the benchmarks of the pipeline itself. No other kit module may join this list.
DRIVERS = {
    "cli.py": {"perfkit.workload", "perfkit.suite"},
    "benchmarks/chaos.py": {"perfkit.workload"},
    "benchmarks/merge.py": {"perfkit.workload"},
    "benchmarks/nucleotide.py": {"perfkit.workload"},
    "benchmarks/protein_mfu.py": {"perfkit.workload"},
    "benchmarks/scaling.py": {"perfkit.workload"},
    "benchmarks/v1_vs_v2.py": {"perfkit.workload"},
}


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement anywhere in the file names (relative imports resolved)."""
    package = ["perfkit"] + ([path.parent.name] if path.parent != PACKAGE else [])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # from perfkit import workload
    return names


def forbidden_imports(path: Path) -> set[str]:
    return {
        top
        for top in FORBIDDEN
        for name in imported_modules(path)
        if name == top or name.startswith(top + ".")
    }


def test_kit_modules_are_found():
    names = {str(p.relative_to(PACKAGE)) for p in KIT}
    assert {
        "criteria.py",
        "projection.py",
        "verdict.py",
        "records.py",
        "plots.py",
        "benchmarks/packing.py",
    } <= names
    assert not any(n.startswith(("workload/", "suite/")) for n in names)


@pytest.mark.parametrize("path", KIT, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_kit_imports_neither_workload_nor_suite(path):
    found = forbidden_imports(path)
    allowed = DRIVERS.get(str(path.relative_to(PACKAGE)), set())
    assert found <= allowed, f"{path.relative_to(PACKAGE)} imports {sorted(found - allowed)}"


def test_drivers_list_is_exact():
    """A driver that no longer imports what it is allowed to leaves the list (it never grows silently)."""
    for name, allowed in DRIVERS.items():
        assert forbidden_imports(PACKAGE / name) == allowed, name


def test_the_check_sees_function_level_and_from_imports(tmp_path):
    module = tmp_path / "mod.py"
    module.write_text("def f():\n    from perfkit import workload\n")
    assert forbidden_imports(module) == {"perfkit.workload"}
    module.write_text("import perfkit.suite.runner as r\n")
    assert forbidden_imports(module) == {"perfkit.suite"}
    module.write_text("from perfkit.suiteX import y\nfrom perfkit import criteria\n")
    assert forbidden_imports(module) == set()
