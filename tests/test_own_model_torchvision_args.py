"""--model-args naming an argument a torchvision factory sets itself (vit_b_16's num_layers, resnet18's
block) is one line naming it, not torchvision's 'got multiple values for keyword argument'."""

import pytest

from engine.errors import UsageError
from engine.models.build import build
from engine.models.reference import parse_model


@pytest.mark.parametrize("name,args,fixed", [("vit_b_16", '{"num_layers": 1}', "num_layers"),
                                             ("resnet18", '{"block": 1}', "block")])
def test_an_argument_the_factory_sets_itself_is_named(name, args, fixed):
    with pytest.raises(UsageError, match=rf"^--model-args {fixed}: torchvision:{name} sets {fixed} itself, so it "
                                         r"cannot be given; leave it out"):
        build(parse_model(f"torchvision:{name}", args), (3, 32, 32), 10)


def test_other_failures_keep_torchvisions_words():
    with pytest.raises(UsageError, match=r"^torchvision:resnet18 cannot be built for 3x32x32 images and 10 classes: "
                                         r".*unexpected keyword argument 'nonsense'"):
        build(parse_model("torchvision:resnet18", '{"nonsense": 2}'), (3, 32, 32), 10)
