"""The distribution: our own `kernels` and `export`, the README's commands, the dependency rules."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10, which pyproject.toml allows: tomllib came in 3.11
    tomllib = None

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(?:bash|sh)?\n(.*?)\n```", section, re.S)


def test_kernels_and_export_are_this_repositorys_packages():
    # PyPI has unrelated packages called `kernels` and `export`; these must be ours.
    import export
    import kernels

    assert Path(kernels.__file__).resolve().parent == ROOT / "kernels"
    assert Path(export.__file__).resolve().parent == ROOT / "export"


def test_readme_quickstart_is_two_commands_and_ci_runs_the_second():
    commands = quickstart_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    assert commands[0].endswith("engine train --amp --compile")
    assert "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == commands[1]


def test_dependencies():
    if tomllib is None:
        pytest.skip("reading pyproject.toml needs tomllib (Python 3.11+)")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"]
    names = {re.split(r"[<>=;\s\[]", d, maxsplit=1)[0] for d in deps}
    assert {"torch", "torchvision", "onnx", "onnxscript", "numpy", "pillow", "tqdm", "matplotlib"} <= names
    gpu = next(d for d in deps if d.startswith("onnxruntime-gpu"))
    cpu = next(d for d in deps if re.match(r"onnxruntime[<>=;\s]", d))
    assert "sys_platform == 'linux' and platform_machine == 'x86_64'" in gpu
    assert "sys_platform != 'linux' or platform_machine != 'x86_64'" in cpu  # exactly the complement: never both
    assert {"pytest", "pytest-benchmark"} <= {re.split(r"[<>=]", d)[0] for d in project["optional-dependencies"]["dev"]}
    assert "tensorboard" in project["optional-dependencies"]
    assert project["scripts"]["engine"] == "engine.cli:main"


@pytest.mark.slow
def test_engine_loads_no_kernel_and_no_onnx_without_asking(tmp_path):
    code = ("import sys; from engine.cli import main; "
            "main(['train', '--epochs', '1', '--limit-train', '64', '--limit-test', '32', '--batch-size', '32', "
            "'--quiet', '--out', sys.argv[1]]); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kernels', 'onnx', 'onnxruntime', 'export')))")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_importing_engine_does_nothing():
    code = "import sys, engine, engine.cli, engine.config; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "False"


def test_no_module_needs_a_newer_python_than_pyproject_allows():
    """requires-python says 3.10: nothing may import 3.11's tomllib unconditionally at module level."""
    floor = re.search(r'requires-python = ">=3\.(\d+)"', (ROOT / "pyproject.toml").read_text())
    assert floor, "requires-python is a >=3.N floor"
    if int(floor.group(1)) >= 11:
        return
    offenders = [str(path.relative_to(ROOT)) for folder in ("engine", "export", "kernels", "tests", "bench")
                 for path in (ROOT / folder).rglob("*.py")
                 if re.search(r"^(import tomllib|from tomllib import)", path.read_text(), re.M)]
    assert offenders == []
