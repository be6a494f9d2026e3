"""engine export .onnx (a name that is only the extension) was refused as 'OUT .onnx must end in .onnx', which it
does: Path('.onnx') is a hidden file whose suffix is empty. Now the line says what is missing."""

import pytest

from engine.errors import UsageError
from export.placing import check_out


@pytest.mark.parametrize("name", [".onnx", ".ONNX"])
def test_a_name_that_is_only_the_extension_is_said_as_such(tmp_path, name):
    with pytest.raises(UsageError) as refused:
        check_out(tmp_path / name)
    assert str(refused.value) == f"OUT {tmp_path / name} has no name before .onnx; give a file name such as model.onnx"


def test_names_check_out_takes_and_refuses(tmp_path):
    assert check_out(tmp_path / "m.ONNX") == tmp_path / "m.ONNX"
    assert check_out(tmp_path / ".m.onnx") == tmp_path / ".m.onnx"  # a hidden file with a name
    with pytest.raises(UsageError, match="must end in .onnx"):
        check_out(tmp_path / "m.onnx.bak")
