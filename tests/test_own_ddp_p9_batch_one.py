"""A run of --batch-size 1 whose BatchNorm sees one value per channel (torchvision:mobilenet_v3_small on
32x32 images: a 1x1 map before its last BatchNorm) was told only that the images are too small, to
resize them with --image-size, when --batch-size 2 (per process under --nproc) trains it as it is."""
import pytest

from engine.errors import UsageError
from engine.models.build import build
from engine.models.reference import parse_model


@pytest.mark.slow
def test_a_batch_of_one_that_batchnorm_cannot_train_names_the_batch_size():
    with pytest.raises(UsageError) as said:
        build(parse_model("torchvision:mobilenet_v3_small"), (1, 32, 32), 2, batch=1)
    line = str(said.value)
    assert "\n" not in line and "Expected more than 1 value per channel" in line
    assert "--batch-size of 2 or more" in line and "per process under --nproc" in line
    assert build(parse_model("torchvision:mobilenet_v3_small"), (1, 32, 32), 2, batch=2) is not None
