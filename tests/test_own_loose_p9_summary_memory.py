"""engine summary --model mlp --num-classes 100000000 ran out of memory and said to lower --batch-size
(which summary has not) or the image size, though the class count was the cause: describe() names what
it was building (the model, its class count and input) and the two flags that size it."""

import pytest

from engine.errors import EngineError
from engine.models.described import describe


def test_summary_out_of_memory_names_the_build():
    with pytest.raises(EngineError) as caught:  # 512 TB: more than any address space, refused at once
        describe("mlp", None, None, 10**12)
    line = str(caught.value)
    assert line.startswith("the host ran out of memory") and "\n" not in line
    assert "building mlp for 1,000,000,000,000 classes at input 1x28x28" in line
    assert "--num-classes" in line and "--batch-size" not in line

