"""A Python caller's own script beside its model file (`python run.py` training nets.py:Net from the same
folder) was kept among the files nets.py imports: every later eval and export of the run warned
'run.py (imported by nets.py) changed since the run was trained' once the script was edited, and 'is not
there any more' once it was deleted, though nets.py never imports it. The __main__ script is left out."""

import subprocess
import sys

import pytest


@pytest.mark.slow  # a Python subprocess whose __main__ is a script beside the model file
def test_the_callers_script_is_not_a_file_the_model_imports(tmp_path):
    (tmp_path / "blocks.py").write_text("WIDTH = 4\n")
    (tmp_path / "nets.py").write_text("from blocks import WIDTH\n")
    (tmp_path / "run.py").write_text("import json, nets\nfrom engine.models.neighbours import of_file\n"
                                     "print(json.dumps(sorted(of_file(nets.__file__))))\n")
    done = subprocess.run([sys.executable, str(tmp_path / "run.py")], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '["blocks.py"]'  # was ["blocks.py", "run.py"]
