"""`--model nets.py` (the class or function left out) said "unknown model 'nets.py'; choose one of:
cifar_cnn, ...", the built-in names, as if the file were not there. It now says to name what builds the
network, with the names the file defines at its top level, read without running it."""

import pytest

from engine.errors import UsageError
from engine.models.reference import parse_model


def test_a_model_file_named_without_its_class_says_what_it_defines_without_running_it(tmp_path):
    nets = tmp_path / "nets.py"
    nets.write_text("raise SystemExit('ran')\nfrom torch import nn\n\n\nclass Net(nn.Module):\n    pass\n\n\n"
                    "def make(num_classes):\n    return Net()\n")
    with pytest.raises(UsageError) as error:
        parse_model(str(nets))
    assert str(error.value) == (f"--model {nets}: name the class or function in it that builds the network, --model "
                                f"{nets}:NAME (defined there: Net, make)")
    broken = tmp_path / "broken.py"
    broken.write_text("class Net(\n")
    with pytest.raises(UsageError, match=r"--model .*broken.py: name the class or function in it that builds the "
                                         r"network, --model .*broken.py:NAME$"):
        parse_model(str(broken))
    with pytest.raises(UsageError, match="unknown model 'missing.py'; choose one of: cifar_cnn"):
        parse_model("missing.py")
