"""A model file or factory that sets torch's thread count (`torch.set_num_threads(1)`, a benchmark
script's habit): before, the whole run then trained on that many threads, unsaid (16x slower on a
16-core machine). Like gradient mode and the default dtype, the engine now puts the count back after
the import and after the call, each said in one warning line."""

import textwrap

import torch

from engine.models.build import build
from engine.models.reference import parse_model

NET = textwrap.dedent("""
    import torch
    from torch import nn

    {top}

    class Net(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            {inside}
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4, num_classes)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)).mean((2, 3)))
""")


def test_threads_a_model_file_sets_are_put_back_and_said(tmp_path, capsys):
    threads = torch.get_num_threads()
    other = 1 if threads > 1 else 2
    for name, top, inside in [("at_import", f"torch.set_num_threads({other})", ""),
                              ("in_init", "", f"torch.set_num_threads({other})")]:
        path = tmp_path / f"{name}.py"
        path.write_text(NET.format(top=top, inside=inside))
        try:
            build(parse_model(f"{path}:Net"), (3, 8, 8), 3)
            assert torch.get_num_threads() == threads
        finally:
            torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert f"at_import.py sets torch's threads to {other} when imported (torch.set_num_threads)" in err
    assert f"in_init.py sets torch's threads to {other} when Net is called" in err
    assert err.count(f"the engine keeps {threads} (OMP_NUM_THREADS sets them for a run)") == 2
