"""engine.reorder: ReLU moved after max-pool is exact (values and gradients), keeps every state-dict
key, and leaves alone what it cannot prove safe."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.reorder import pool_before_relu


class Tutorial(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 5), nn.Conv2d(6, 8, 3)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc = nn.Linear(8 * 3 * 3, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))  # a module pool after a functional ReLU
        x = F.max_pool2d(torch.relu(self.conv2(x)), 2)  # both functional
        return self.fc(torch.flatten(x, 1))


class Features(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2, padding=1), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(4 * 2 * 2, 5)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class Reused(nn.Module):
    """An in-place ReLU whose input is read again: swapping it would change `y`."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        z = F.max_pool2d(F.relu(y, inplace=True), 2)
        return z.mean((1, 2, 3)) + y.mean((1, 2, 3))


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = -x
        return F.max_pool2d(F.relu(self.conv(x)), 2).flatten(1)


@pytest.mark.parametrize("make, shape, swaps", [(Tutorial, (5, 3, 20, 20), 2), (Features, (4, 3, 13, 13), 2)])
def test_the_swap_is_exact_for_values_and_gradients(make, shape, swaps):
    torch.manual_seed(0)
    model = make()
    reordered, count = pool_before_relu(copy.deepcopy(model))
    assert count == swaps and isinstance(reordered, torch.fx.GraphModule)
    assert list(reordered.state_dict()) == list(model.state_dict())  # checkpoints keep their keys
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    for net in (model, reordered):
        net.train()
    a, b = model(x), reordered(x)
    assert torch.equal(a, b)  # the same elements are selected: equal, not merely close
    a.square().sum().backward()
    b.square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), reordered.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=0, atol=1e-6), name  # summation order may differ in the last bit
    assert all(torch.equal(u, v) for u, v in zip(model.buffers(), reordered.buffers()))  # BatchNorm statistics


def test_what_cannot_be_proven_safe_is_left_alone():
    for make in (Reused, Branchy):
        model = make()
        same, count = pool_before_relu(model)
        assert same is model and count == 0
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.ReLU())  # already pooled first
    assert pool_before_relu(plain) == (plain, 0)


def test_the_runtime_reorders_a_users_model_and_reports_it():
    from engine.config import Config
    from engine.runtime import Runtime

    runtime = Runtime.from_config(Config(device="cpu", amp=False, channels_last=True))
    model = runtime.prepare(Tutorial())
    assert isinstance(model, torch.fx.GraphModule) and "max-pool before ReLU (2x, exact)" in runtime.describe()
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)


class Dropping(nn.Module):
    """The tutorials' functional dropout: its forward reads self.training, which a trace would freeze."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 3 * 3, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc(F.dropout(torch.flatten(x, 1), 0.5, training=self.training))


class Counting(nn.Module):
    """A forward that writes its own buffer in training mode: tracing it must not touch the user's module."""

    def __init__(self):
        super().__init__()
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 3 * 3, 10)

    def forward(self, x):
        if self.training:
            self.seen += x.shape[0]
        return self.fc(torch.flatten(F.max_pool2d(F.relu(self.conv(x)), 2), 1))


def test_a_forward_that_reads_self_training_is_left_alone_and_untouched_by_tracing():
    from engine.config import Config
    from engine.runtime import Runtime

    x = torch.randn(4, 3, 8, 8)
    for make in (Dropping, Counting):
        model = make()
        same, count = pool_before_relu(model)
        assert same is model and count == 0
        assert isinstance(model.seen, torch.Tensor) if make is Counting else True  # no fx Proxy left behind
        prepared = Runtime.from_config(Config(device="cpu", amp=False)).prepare(make()).eval()
        with torch.no_grad():
            assert torch.equal(prepared(x), prepared(x))  # eval mode evaluates in eval mode: no dropout
        prepared.train()(x)  # and it still trains (the buffer counts)
    tutorial = Tutorial()
    weights = {k: v.clone() for k, v in tutorial.state_dict().items()}
    reordered, count = pool_before_relu(tutorial)
    assert count == 2 and all(torch.equal(weights[k], v) for k, v in tutorial.state_dict().items())


class CallCounting(nn.Module):
    """Keeps Python state in its forward: a trace would run `self.calls += 1` once and freeze the branch."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc, self.calls, self.history = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(64, 10), 0, []

    def forward(self, x):
        self.calls += 1
        out = self.fc(torch.flatten(F.max_pool2d(F.relu(self.conv(x)), 2), 1))
        return out * 0 if self.calls > 3 else out


class Remembering(CallCounting):
    def forward(self, x):
        self.history.append(len(self.history))  # a list that grows: the same object, new contents
        return self.fc(torch.flatten(F.max_pool2d(F.relu(self.conv(x)), 2), 1))


class RandomBranch(CallCounting):
    def forward(self, x):
        import random

        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc(torch.flatten(x if random.random() < 0.5 else -x, 1))


def test_a_forward_that_keeps_python_state_or_draws_python_randoms_runs_as_written():
    x = torch.randn(2, 3, 8, 8)
    for make in (CallCounting, Remembering):
        model = make()
        same, count = pool_before_relu(model)
        assert same is model and count == 0 and model.calls == 0 and model.history == []  # the model untouched
    model = CallCounting()
    outputs = [pool_before_relu(model)[0](x) for _ in range(5)]
    assert outputs[3].abs().sum() == 0 and outputs[2].abs().sum() > 0  # its own counter, as written
    import random

    for seed in range(8):  # its forward imports: left alone before a trace could draw the same branch thrice
        random.seed(seed)
        assert pool_before_relu(RandomBranch())[1] == 0


CALLS = []
DRAWS = __import__("random").Random(0)


class Logged(nn.Sequential):
    """A block whose forward keeps a module-level log, as a user's layers.py might."""

    def __init__(self):
        super().__init__(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))

    def forward(self, x):
        CALLS.append(x.shape[0])
        return super().forward(x)


class GlobalDraw(Tutorial):
    def forward(self, x):  # an in-model augmentation drawing from a module-level generator
        return super().forward(x.flip(3) if DRAWS.random() < 0.5 else x)


class OwnGenerator(Tutorial):
    def __init__(self):
        super().__init__()
        self.rng = __import__("random").Random(0)

    def forward(self, x):
        return super().forward(x.flip(3) if self.rng.random() < 0.5 else x)


class Printing(Tutorial):
    def forward(self, x):
        print("forward", tuple(x.shape))
        return super().forward(x)


class Helper(Tutorial):
    def forward(self, x):
        return _scaled(super().forward(x))


def _scaled(y):
    return y * 2


class Pure(Tutorial):
    SCALE = 0.5

    def forward(self, x):
        return super().forward(x) * SCALE + math.pi * 0


SCALE = 0.5


def test_python_a_trace_would_drop_leaves_the_model_as_written_before_any_trace():
    """A trace keeps the tensor operations and runs the rest once: a module-level counter, a draw from
    `random`, a print, a call of the file's own helper, or a generator kept on the module would run at
    start-up and never again. Such models are left alone; torch, math and constants are fine."""
    x = torch.randn(2, 3, 20, 20)
    model = nn.Sequential(Logged(), nn.Flatten())
    same, count = pool_before_relu(model)
    assert same is model and count == 0 and CALLS == []  # not even traced
    for _ in range(3):
        same(x)
    assert CALLS == [2, 2, 2]
    for make in (GlobalDraw, OwnGenerator, Printing, Helper):
        model = make()
        assert pool_before_relu(model) == (model, 0), make.__name__
    assert pool_before_relu(Pure())[1] == 2


class Hooked(Tutorial):
    """Tutorial with hooks on the model itself, as a user registers them in __init__."""

    def __init__(self):
        super().__init__()
        self.register_forward_pre_hook(lambda module, args: (1.0 - args[0],))
        self.register_forward_hook(lambda module, args, out: out * 3.0)


class OwnCall(Tutorial):
    def __call__(self, x):
        return super().__call__(x.flip(3))


def test_hooks_on_the_model_itself_or_its_own_call_leave_it_as_written():
    """A trace calls the root's forward directly, dropping hooks on the model itself and its own
    __call__ (a submodule's hooks are kept): such a model would train as another function than the one
    exported, so it is left alone; the same net without them is reordered."""
    x = torch.rand(2, 3, 20, 20)
    for make in (Hooked, OwnCall):
        model = make()
        same, count = pool_before_relu(model)
        assert same is model and count == 0, make.__name__
    hooked = Tutorial()
    hooked.conv1.register_forward_hook(lambda module, args, out: out * 2.0)  # a submodule's: kept by the trace
    swapped, count = pool_before_relu(hooked)
    assert count == 2
    torch.testing.assert_close(swapped(x), hooked(x))


class ReluModule(nn.Module):
    """conv -> nn.ReLU module -> nn.MaxPool2d, twice: the pairs a hook on the ReLU or the pool sits in."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 5), nn.Conv2d(6, 8, 3)
        self.relu1, self.relu2, self.pool1, self.pool2 = nn.ReLU(), nn.ReLU(), nn.MaxPool2d(2), nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 3 * 3, 10)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


@pytest.mark.parametrize("hooked", ["relu1", "pool1"])
def test_a_hook_on_a_relu_or_its_pool_keeps_that_pair_as_written(hooked):
    """A hook the user put on an nn.ReLU (zeroing its output, say) or on the pool after it: swapping
    that pair would drop the ReLU's hook or hand the pool's the pooled ReLU input, and train another
    function than the one exported. That pair stays; the other is swapped, and the model computes
    what the user's does."""
    torch.manual_seed(0)
    model = ReluModule()
    getattr(model, hooked).register_forward_hook(lambda module, args, out: out * 0.5 - 0.1)
    x = torch.randn(2, 3, 20, 20)
    swapped, count = pool_before_relu(model)
    assert count == 1
    torch.testing.assert_close(swapped(x), model(x))


def test_global_module_hooks_leave_the_model_as_written():
    """A hook registered for every module (nn.modules.module.register_module_forward_hook) sees each
    ReLU's and pool's output: none is swapped."""
    model = ReluModule()
    handle = nn.modules.module.register_module_forward_hook(lambda module, args, out: None)
    try:
        assert pool_before_relu(model) == (model, 0)
    finally:
        handle.remove()
    assert pool_before_relu(model)[1] == 2
