"""The repository keeps its promises: no wall-clock assertion in tests (speed lives in benchmarks/), and a
LICENSE that matches pyproject.toml."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLOCKS = {"perf_counter", "perf_counter_ns", "time", "time_ns", "monotonic", "monotonic_ns", "process_time",
          "process_time_ns", "thread_time", "default_timer"}
DURATION_NAMES = re.compile(r"(^|_)(seconds|secs|elapsed|duration|wall|runtime|took|dt|ms)$")


def _is_clock(node) -> bool:
    """time.perf_counter(), perf_counter(), timeit.default_timer(), datetime.now() ..."""
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
    return name in CLOCKS or name in ("now", "utcnow") and isinstance(f, ast.Attribute)


def _names(node) -> set:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | \
        {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}


def wall_clock_asserts(source: str, filename: str = "<test>") -> list[str]:
    """Lines of `source` that assert on a wall-clock measurement."""
    tree = ast.parse(source, filename)
    tainted: set = set()
    changed = True
    while changed:  # names computed from a clock, directly or through other such names
        changed = False
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and node.value is not None:
                if any(_is_clock(n) for n in ast.walk(node.value)) or _names(node.value) & tainted:
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    new = {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)} | \
                          {t.attr for t in targets if isinstance(t, ast.Attribute)}
                    if new - tainted:
                        tainted |= new
                        changed = True
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assert):
            continue
        test = node.test
        timed = any(_is_clock(n) for n in ast.walk(test)) or bool(_names(test) & tainted)
        bounded = any(isinstance(n, ast.Compare) and any(isinstance(op, (ast.Lt, ast.LtE, ast.Gt, ast.GtE))
                                                         for op in n.ops)
                      and any(DURATION_NAMES.search(x) for x in _names(n)) for n in ast.walk(test))
        if timed or bounded:
            found.append(f"{filename}:{node.lineno}: {ast.get_source_segment(source, node)}")
    return found


@pytest.mark.parametrize("src", [
    "import time\nt0 = time.perf_counter()\nf()\nassert time.perf_counter() - t0 < 5\n",
    "import time\nt0 = time.perf_counter()\nf()\nseconds = time.perf_counter() - t0\nassert seconds < 5\n",
    "from time import monotonic\nstart = monotonic()\nf()\nassert monotonic() - start <= 1.0, 'slow'\n",
    "h = fit()\nassert h.seconds < 60\n",
    "import time\nt = time.time()\nd = time.time() - t\nratio = d / 2\nassert ratio < 3\n",
    "r = run()\nassert r.elapsed_ms <= 100 and r.ok\n",
])
def test_the_detector_catches_wall_clock_asserts(src):
    assert wall_clock_asserts(src)


def test_the_detector_leaves_other_asserts_alone():
    src = ("import time, subprocess\nr = subprocess.run(['x'], timeout=60)\nassert r.returncode == 0\n"
           "t = lens.trace(loss)\nassert len(t) < 60 and t.summary()['nodes'] > 3\n"
           "# assert h.seconds < 60 in a comment\ns = 'assert time.perf_counter() < 5'\n")
    assert wall_clock_asserts(src) == []


def test_no_wall_clock_assertion_in_tests():
    found = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        found += wall_clock_asserts(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, ("speed belongs in benchmarks/ (printing ratios against a baseline), not in tests a loaded "
                       "machine turns red:\n" + "\n".join(found))


def _pyproject_license() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    try:
        import tomllib
    except ImportError:  # Python 3.10
        m = re.search(r'^license\s*=\s*(?:\{\s*text\s*=\s*)?"([^"]+)"', text, re.M)
        return m.group(1) if m else ""
    lic = tomllib.loads(text)["project"]["license"]
    return lic["text"] if isinstance(lic, dict) else lic


MIT_GRANT = ("Permission is hereby granted, free of charge, to any person obtaining a copy of this software and "
             "associated documentation files (the \"Software\"), to deal in the Software without restriction")
MIT_WARRANTY = "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND"


def test_license_file_matches_pyproject():
    assert _pyproject_license() == "MIT"
    text = " ".join((ROOT / "LICENSE").read_text().split())
    assert text.startswith("MIT License Copyright (c) 2026 the autogradlens authors ")
    assert MIT_GRANT in text and MIT_WARRANTY in text


def top_level_redefinitions(source: str) -> list[str]:
    """Functions and classes defined twice at a module's top level (the second silently shadows the first:
    rules.py once had two `_pad`s). Assignments may rebind; definitions may not."""
    seen, twice = set(), []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name in seen:
                twice.append(f"{node.name} (line {node.lineno})")
            seen.add(node.name)
    return twice


def test_the_redefinition_check_finds_a_shadowed_helper():
    assert top_level_redefinitions("def _pad(c):\n    pass\n\ndef _pad(x, p):\n    pass\n") == ["_pad (line 4)"]
    assert top_level_redefinitions("def a():\n    pass\n\nclass B:\n    def a(self):\n        pass\n") == []


@pytest.mark.parametrize("path", sorted((ROOT / "autogradlens").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_defines_a_top_level_name_twice(path):
    assert top_level_redefinitions(path.read_text()) == [], f"{path.name} defines these twice"


def test_the_mirror_benchmark_breakdown_times_functions_that_exist():
    """benchmarks/bench_mirror.py --breakdown wraps the mirror's functions by name: a rename would crash it (or,
    for a name the package no longer calls, time nothing), so every name must still be one the mirror calls."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_mirror", ROOT / "benchmarks" / "bench_mirror.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    homes = bench.homes()
    source = "".join(p.read_text() for p in (ROOT / "autogradlens" / "mirror").glob("*.py"))
    for part, names in bench.PARTS.items():
        for home, name in names:
            assert callable(getattr(homes[home], name, None)), f"{part}: {home}.{name} is gone"
            uses = len(re.findall(rf"\b{re.escape(name)}\b", source)) - len(re.findall(rf"def {name}\b", source))
            assert name.startswith("__") or uses > 0, f"{part}: nothing in the mirror refers to {name} any more"
