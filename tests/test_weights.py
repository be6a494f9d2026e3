"""engine.models.weights: --init-from (engine checkpoints and plain state dicts) and --freeze."""

import pytest
import torch

from engine.errors import EngineError, UsageError
from engine.models import build_model
from engine.models.build import build
from engine.models.reference import parse_model
from engine.models.weights import freeze_prefixes, init_from


def test_plain_torchvision_weights_load_and_a_head_of_another_class_count_is_reinitialised(tmp_path):
    torch.manual_seed(0)
    source = build(parse_model("torchvision:resnet18"), (3, 32, 32), 1000)  # like downloaded ImageNet weights
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, tmp_path / "r18.pth")  # a DDP prefix
    model = build(parse_model("torchvision:resnet18"), (3, 32, 32), 10)
    head = model.fc.weight.clone()
    said = []
    assert sorted(init_from(model, tmp_path / "r18.pth", say=said.append)) == ["fc.bias", "fc.weight"]
    assert torch.equal(model.conv1.weight, source.conv1.weight) and torch.equal(model.fc.weight, head)
    assert "fc.weight, fc.bias re-initialised (1000 classes there, 10 here)" in said[0]
    with pytest.raises(UsageError, match=r"--freeze fc would keep fc.weight, fc.bias at random values: --init-from"):
        freeze_prefixes(model, "layer4,fc", said.append, fresh=["fc.weight", "fc.bias"])
    freeze_prefixes(model, "layer4", said.append, fresh=["fc.weight", "fc.bias"])  # the layers before it: taken


def test_an_engine_checkpoint_initialises_a_new_run(tiny_run):
    model = build_model("cifar_cnn", (3, 32, 32), 10)
    init_from(model, tiny_run[1], say=lambda *_: None)
    saved = torch.load(tiny_run[1], weights_only=True)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_weights_that_do_not_fit_are_one_line(tmp_path):
    torch.save(build_model("lenet", (3, 32, 32), 10).state_dict(), tmp_path / "lenet.pth")
    with pytest.raises(EngineError, match="does not fit this model: it has no features.2.conv.weight|does not fit this model"):
        init_from(build_model("cifar_cnn", (3, 32, 32), 10), tmp_path / "lenet.pth")
    for text in (b"junk", b"root:x:0:0:root:/root:/bin/bash\n", b"\x80\x02}q\x00."):  # the 2nd: Python's IndexError
        (tmp_path / "junk.pt").write_bytes(text)
        with pytest.raises(EngineError, match=r"is not a readable weights file \(not a PyTorch checkpoint"):
            init_from(build_model("cifar_cnn", (3, 32, 32), 10), tmp_path / "junk.pt")
    with pytest.raises(EngineError, match="no such file") as missing:  # a file that is not there: exit 1, as for --data
        init_from(build_model("cifar_cnn", (3, 32, 32), 10), tmp_path / "absent.pt")
    assert missing.value.exit_code == 1


def test_freeze_keeps_named_parameters_fixed_and_a_prefix_matching_nothing_is_one_line():
    model = build(parse_model("torchvision:resnet18"), (3, 32, 32), 10)
    said = []
    freeze_prefixes(model, "conv1,layer1", say=said.append, loaded=False)  # 64x3x7x7 + 2 x (2 x 64x64x3x3 + 2 x 2 x 64)
    assert said == ["Frozen: conv1, layer1 (157,376 parameters stay fixed at the values the model was built with: no "
                    "--init-from loaded weights into them)"]
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "conv1.weight" in frozen and "layer1.0.conv1.weight" in frozen and "layer2.0.conv1.weight" not in frozen
    with pytest.raises(UsageError, match="--freeze layer9: no parameter is named layer9 or under it; top-level names: bn1"):
        freeze_prefixes(model, "layer9")
    with pytest.raises(UsageError, match="--freeze conv1,bn1,layer1,layer2,layer3,layer4,fc leaves no parameter to train"):
        freeze_prefixes(model, "conv1,bn1,layer1,layer2,layer3,layer4,fc", say=lambda *_: None)


def test_an_ema_runs_checkpoint_initialises_from_its_average_and_says_so(tmp_path):
    from engine.config import Config
    from engine.train import train

    out, _ = train(Config(epochs=1, limit_train=128, limit_test=32, batch_size=32, amp=False, quiet=True, device="cpu",
                          ema=0.9, out=str(tmp_path / "run")), log=lambda *_: None)
    saved = torch.load(out / "best.pt", weights_only=True)
    assert any(not torch.equal(saved["model"][k], saved["model_ema"][k]) for k in saved["model"])
    model, said = build_model("cifar_cnn", (3, 32, 32), 10), []
    init_from(model, out / "best.pt", said.append)
    assert all(torch.equal(model.state_dict()[k], saved["model_ema"][k]) for k in saved["model_ema"])
    assert said[0].endswith("is an --ema run's checkpoint: starting from its weight average")
