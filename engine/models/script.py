"""Reading a user's .py file without running it (Python's ast): what it defines at its top level, and
whether its top level would start the engine's work again when a checkpoint's reload imports it."""

import ast
from pathlib import Path

from engine.errors import UsageError


def defined_names(path):
    """The classes and functions a .py file defines at its top level (none where it does not parse)."""
    try:
        body = ast.parse(Path(path).expanduser().read_bytes()).body
    except (OSError, SyntaxError, ValueError):
        return []
    return [node.name for node in body if isinstance(node, (ast.ClassDef, ast.FunctionDef))]


RUNS_WORK = {"train", "evaluate_checkpoint", "evaluate_onnx", "export_onnx"}  # what a reload must never start


def check_guarded(script):
    """A script whose class a checkpoint names is imported to reload it (`engine eval --model
    script.py:Net`): one line where its top level would start the engine's work again on that import,
    a call to train() outside `if __name__ == "__main__":` (it would train once more, or recurse)."""
    try:
        tree = ast.parse(Path(script).read_text(), script)
    except (OSError, SyntaxError, ValueError):
        return
    for statement in tree.body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or _main_guard(statement):
            continue
        for node in ast.walk(statement):
            called = node.func.id if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) else (
                node.func.attr if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) else None)
            if called in RUNS_WORK:
                raise UsageError(f"{Path(script).name} calls {called}() at its top level (line {node.lineno}); its "
                                 "checkpoint reloads the model class by importing the script, which would run that "
                                 'again: put it under if __name__ == "__main__":')


def _main_guard(statement):
    """Whether `statement` is `if __name__ == "__main__":`."""
    test = statement.test if isinstance(statement, ast.If) else None
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))
