"""The shape rules a reader relies on: only the engine modules import the ML stack, and the plain
modules import without it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ML_STACK = {"torch", "transformers", "vllm", "torchvision"}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


# The engine modules that may import the ML stack; the package's __init__ imports the chosen one
# lazily (inside `load_engine`), and api.py / loop.py are the plain boundary.
ENGINE_MODULES = {"worker/engine/hf.py", "worker/engine/hf_config.py", "worker/engine/vllm_engine.py",
                  "worker/engine/__init__.py"}


def test_only_the_engine_modules_import_torch_transformers_or_vllm():
    offenders = {}
    for path in sorted((ROOT / "worker").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        found = imported_roots(path) & ML_STACK
        if found and relative not in ENGINE_MODULES:
            offenders[relative] = found
    assert not offenders, offenders


def test_the_worker_imports_without_the_ml_stack_loaded():
    """Importing the service, server, handler and client must not pull torch in: cold starts and the
    bulk client (a laptop without torch) depend on it."""
    code = ("import sys; import worker.service, worker.server, worker.handler, worker.bulk, worker.pipeline; "
            "print(sorted(m for m in ('torch', 'transformers', 'vllm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
