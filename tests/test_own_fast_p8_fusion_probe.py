"""--triton's check that a fused run computes what the forward computes (engine.fusion._tapped) reads a
torch.fx trace, and was skipped for a model that does not trace (control flow on tensor values) or
whose forward calls a helper of its own: such a model's runs were fused all the same, and a forward
that tapped a ReLU map, or computed something between a run's ReLU and its pool, got another
function without a word (0.1 off in the logits). Now fusing them is checked on a probe batch, each run
left alone where it changes the output; without an input shape they are left alone."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import UsageError
from engine.fusion import checked_runs, find_runs, fuse
from engine.runtime import use_triton
from tests.conftest import requires_triton

SHAPE = (3, 12, 14)


def _features():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.MaxPool2d(2), nn.ReLU())


def _pooled(x):
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


class Tapping(nn.Module):
    """A multi-scale head reading the first ReLU's map, and a branch on a tensor's value: no trace."""

    def __init__(self, at=1):
        super().__init__()
        self.features, self.at, self.head = _features(), at, nn.Linear(16, 3)

    def forward(self, x):
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == self.at:
                taps.append(_pooled(x))
        if x.sum() > 0:
            x = x * 1
        return self.head(torch.cat(taps + [_pooled(x)], 1))


class Whole(nn.Module):
    """Calls its Sequential whole, then branches on a tensor's value: fusing is exact."""

    def __init__(self):
        super().__init__()
        self.features, self.head = _features(), nn.Linear(8, 3)

    def forward(self, x):
        x = self.features(x)
        if x.amax() > 1e6:
            x = x / 2
        return self.head(_pooled(x))


def centred(block, x):  # ReLU, then a mean over the full-resolution map, then the pool
    x = block[1](block[0](x))
    return block[2](x - x.mean())


def swapped(block, x):  # conv, pool, then ReLU: what the fused op computes
    return block[1](block[2](block[0](x)))


class Helper(nn.Module):
    def __init__(self, helper):
        super().__init__()
        self.block, self.helper = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2)), helper
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(_pooled(self.helper(self.block, x)))


def _same_after_fusing(model, expect):
    torch.manual_seed(0)
    x = torch.randn(3, *SHAPE)
    model.eval()
    want = model(x)
    fused = copy.deepcopy(model)
    assert fuse(fused, shape=SHAPE) == expect
    torch.testing.assert_close(fused(x), want, rtol=1e-5, atol=1e-6)
    return fused


@pytest.mark.parametrize("make", [Tapping, lambda: Helper(centred)], ids=["untraceable", "helper"])
def test_a_run_the_forward_does_not_call_as_one_chain_is_not_fused(make):
    torch.manual_seed(0)
    model = make()
    runs, why = checked_runs(model, SHAPE)
    assert "changed its output on a probe batch" in why and "\n" not in why
    _same_after_fusing(model, len(runs))
    if not runs:
        with pytest.raises(UsageError, match="changed its output on a probe batch.*; run without --triton"):
            use_triton(model, torch.device("cpu"), shape=SHAPE)


def test_only_the_tapped_run_of_an_untraceable_model_is_left_alone():
    torch.manual_seed(0)
    model = Tapping(at=1)
    runs, why = checked_runs(model, SHAPE)
    assert [i for _, i, _, _ in runs] == [3] and "run at features.0 changed" in why
    fused = _same_after_fusing(model, 1)
    assert type(fused.features[0]) is nn.Conv2d and type(fused.features[3]).__name__ == "FusedConvReluPool"


@pytest.mark.parametrize("make", [Whole, lambda: Helper(swapped)], ids=["untraceable", "helper"])
def test_runs_called_as_one_chain_still_fuse_once_checked(make):
    torch.manual_seed(0)
    model = make()
    runs, why = checked_runs(model, SHAPE)
    assert runs and why == ""
    _same_after_fusing(model, len(runs))


def test_without_an_input_shape_an_unreadable_forward_is_not_fused_and_says_why():
    model = Whole()
    runs, why = checked_runs(model)
    assert runs == [] and find_runs(model) == [] and fuse(model) == 0
    assert "cannot be read by a torch.fx trace" in why and "features.0, features.3" in why
    with pytest.raises(UsageError, match="no input shape to check them"):
        use_triton(model, torch.device("cpu"))


def test_a_forward_that_raises_on_the_probe_is_left_alone_in_one_line():
    class Picky(Whole):
        def forward(self, x):
            if x.shape[0] < 8:
                raise ValueError("batches of 8 or more")
            return super().forward(x)

    runs, why = checked_runs(Picky(), SHAPE)
    assert runs == [] and "raised ValueError on a probe batch of 3x12x14" in why


def test_the_probe_leaves_the_model_and_the_random_streams_as_they_were():
    import random

    model = Whole().train()
    model.features.append(nn.BatchNorm2d(8))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(5)
    random.seed(5)
    checked_runs(model, SHAPE)
    after = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(1)) and random.random() == random.Random(5).random()
    assert model.training and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


class ModeTap(nn.Module):
    """Traces in both modes, but reads the first run's ReLU map itself in evaluation mode only."""

    def __init__(self):
        super().__init__()
        self.features, self.head = _features(), nn.Linear(8, 3)

    def forward(self, x):
        if self.training:  # (no helper of the file's own, so that a torch.fx trace is read)
            return self.head(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))
        y = self.features[1](self.features[0](x))
        y = self.features[5](self.features[4](self.features[3](y - y.mean())))
        return self.head(F.adaptive_avg_pool2d(y, 1).flatten(1))


def test_a_run_tapped_in_one_mode_only_is_left_alone_whichever_mode_the_model_is_in():
    torch.manual_seed(0)
    for training in (True, False):
        model = ModeTap().train(training)
        assert [i for _, i, _, _ in find_runs(model)] == [3]  # the run the evaluation reads stays whole
        fused = copy.deepcopy(model)
        fuse(fused)
        x = torch.randn(2, *SHAPE)
        for mode in (True, False):
            torch.testing.assert_close(fused.train(mode)(x), model.train(mode)(x), rtol=1e-5, atol=1e-6)


class Reuse(nn.Module):
    """Calls its Sequential whole, then that Sequential's own ReLU (or pool) once more by index: fused,
    that slot would hold an nn.Identity."""

    def __init__(self, again):
        super().__init__()
        self.features, self.again, self.head = _features(), again, nn.Linear(8, 3)

    def forward(self, x):
        x = self.features(x)
        x = self.features[self.again](x - 0.5)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


@pytest.mark.parametrize("again", [1, 2, 5])
def test_a_runs_relu_or_pool_called_again_elsewhere_keeps_that_run_whole(again):
    torch.manual_seed(0)
    model = Reuse(again).eval()
    left = 0 if again < 3 else 3  # features[5], the second run's ReLU
    assert [i for _, i, _, _ in find_runs(model)] == [3 - left]
    _same_after_fusing(model, 1)


class Gated(Tapping):
    """Adds the first ReLU's map through a gate initialised to zero (ReZero, a layer scale): fused, the
    model at hand computes the same, but not once training opens the gate."""

    def __init__(self):
        super().__init__()
        self.gate, self.head = nn.Parameter(torch.zeros(1)), nn.Linear(8, 3)

    def forward(self, x):
        tap = None
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == 1:
                tap = F.adaptive_avg_pool2d(x, 1).flatten(1)
        if x.sum() > 0:
            x = x * 1
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1) + self.gate * tap)


def test_a_tap_switched_off_by_a_zero_gate_at_the_start_is_still_seen():
    torch.manual_seed(0)
    model = Gated()
    runs, why = checked_runs(model, SHAPE)
    assert [i for _, i, _, _ in runs] == [3] and "run at features.0 changed" in why
    with torch.no_grad():
        model.gate.fill_(0.5)  # as training leaves it
    _same_after_fusing(model, 1)
    assert torch.equal(model.gate, torch.full((1,), 0.5))  # the probe perturbed copies only


class InPlace(Whole):
    """Normalises its input in place, then calls its Sequential whole: fusing is exact."""

    def forward(self, x):
        x.sub_(0.5).mul_(2)
        return super().forward(x)


def test_a_forward_changing_its_input_in_place_is_still_fused():
    torch.manual_seed(0)
    runs, why = checked_runs(InPlace(), SHAPE)
    assert len(runs) == 2 and why == ""


class NumpyNoise(Whole):
    """Adds numpy noise to its logits (untraceable: a numpy call): the same draws for each probe."""

    def forward(self, x):
        import numpy as np

        return super().forward(x) + torch.from_numpy(np.random.randn(3).astype("float32"))


def test_numpy_draws_in_a_forward_neither_block_fusing_nor_move_the_callers_numpy_state():
    import numpy as np

    np.random.seed(3)
    runs, why = checked_runs(NumpyNoise(), SHAPE)
    assert len(runs) == 2 and why == ""
    assert np.random.randn() == np.random.RandomState(3).randn()


@requires_triton
def test_a_run_left_unfused_is_said_once_though_a_weight_average_is_prepared_too(capsys):
    class Averaged(Tapping):  # a class of its own: a line no other test said
        pass

    for _ in range(2):  # the model, then --ema's average
        assert use_triton(Averaged(at=1), torch.device("cpu"), shape=SHAPE) == 1
    said = capsys.readouterr().err
    assert said.count("fusing Averaged's run at features.0 changed its output") == 1
