"""Project hygiene: lint, types, the compose file."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = ["daemon", "snapshotter", "shim", "ctl", "proto/generate.py", "tests", "benchmarks"]


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_ruff_lint() -> None:
    proc = run(sys.executable, "-m", "ruff", "check", *SOURCES)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format() -> None:
    proc = run(sys.executable, "-m", "ruff", "format", "--check", *SOURCES)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy() -> None:
    # pyproject names what is checked: the pyctr package, through .mypy/pyctr.
    proc = run(sys.executable, "-m", "mypy")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_sees_real_types_through_the_context(tmp_path: Path) -> None:
    """pyctr.* imports resolve to the source (not Any), so calls through Context are checked."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from pyctr.daemon.context import Context\n\n\n"
        "async def f(ctx: Context) -> None:\n"
        "    ctx.runtime.no_such_method()\n"
        "    await ctx.images.pull(42)\n"
    )
    proc = run(sys.executable, "-m", "mypy", str(probe))
    assert '"RuntimeManager" has no attribute "no_such_method"' in proc.stdout, proc.stdout
    assert 'Argument 1 to "pull" of "ImageManager"' in proc.stdout, proc.stdout


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at top level or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package (pyctr.snapshotter...)
                package = ["pyctr", *path.relative_to(REPO).parent.parts]
                base = package[: len(package) - node.level + 1]
                names.add(".".join([*base, node.module] if node.module else base))
            elif node.module:
                names.add(node.module)
    return names


def test_snapshotter_does_not_import_the_daemon() -> None:
    """The snapshotter is a library the daemon uses, never the other way round."""
    offenders = {
        str(path.relative_to(REPO)): sorted(
            m
            for m in _imported_modules(path)
            if m == "pyctr.daemon" or m.startswith("pyctr.daemon.")
        )
        for path in sorted((REPO / "snapshotter").rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    # And at run time: loading every snapshotter module pulls in no daemon module.
    modules = [f"pyctr.snapshotter.{p.stem}" for p in (REPO / "snapshotter").glob("*.py")]
    code = (
        "import importlib, sys\n"
        f"for m in {sorted(modules)!r}: importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m.startswith('pyctr.daemon')))\n"
    )
    proc = run(sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="Debian's docker-compose not installed"
)
def test_compose_file_is_valid() -> None:
    proc = run("docker-compose", "-f", "docker-compose.test.yml", "config", "-q")
    assert proc.returncode == 0, proc.stderr
