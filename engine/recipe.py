"""What a model's recipe adds to a run: the default flag values `engine train` fills in for a model
(ModelSpec.recipe), and the data-dependent start of a fresh run (fast_cifar's whitened stem).

Recipes belong to the command line: `train(Config(...))` from Python uses exactly the values it
is given. The whitening is part of the model and happens for every fresh run, however started.
"""

import torch

from engine.config import Config, flag
from engine.normalization import Normalize

WHITEN_IMAGES = 5_000  # training images the stem's patch statistics come from (airbench's count)


def apply_recipe(values, say=print):
    """`values` (the Config fields given on the command line) completed with the model's recipe
    for every field not given; says in one line what it filled in. A recipe value may be a function
    of the run's values (fast_cifar94's lr, airbench's rate per image, at the --batch-size used)."""
    from engine.models import MODELS

    model = values.get("model", Config.__dataclass_fields__["model"].default)
    recipe = getattr(MODELS.get(model), "recipe", None) or {}
    applied = {name: value for name, value in recipe.items() if name not in values}
    merged = {**values, **applied}
    for name, value in applied.items():  # a value that follows others (an lr per image, at the batch size used)
        if callable(value):
            applied[name] = value(merged)
    if applied:
        shown = ", ".join(_show(name, value) for name, value in applied.items())
        say(f"Recipe for {model}: {shown} (flags given on the command line win)")
    return {**values, **applied}


def _show(name, value):
    """A recipe value as its flag reads: --lookahead, --no-amp, --lr 0.1."""
    if value is True or value is False:
        return flag(name) if value else f"--no-{flag(name)[2:]}"
    return f"{flag(name)} {value:.4g}" if isinstance(value, float) else f"{flag(name)} {value}"


def whitening_images(train_x, spec, seed, count=WHITEN_IMAGES):
    """A seeded random `count` of the training images (N, C, H, W) uint8, normalised as the
    loader normalises them: float32 (n, C, H, W). Its own generator: the global RNG, which
    initialises the weights, is not touched."""
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(train_x), generator=generator)[:count].sort().values
    return Normalize(spec.mean, spec.std)(train_x[pick])


def init_from_data(model, train_x, spec, seed, say=print):
    """A fresh run's data-dependent initialisation, for models that have one (`init_from_data`,
    e.g. fast_cifar's patch-whitening stem). Call before the optimizer is built; a resumed run
    takes the weights from its checkpoint instead."""
    if not hasattr(model, "init_from_data"):
        return False
    images = whitening_images(train_x, spec, seed)
    model.init_from_data(images)
    own = getattr(type(model).init_from_data, "__module__", "").startswith("engine.")  # fast_cifar's, or a user's
    how = "patch whitening" if own else f"{type(model).__name__}.init_from_data"
    say(f"Initialised {type(model).__name__} from {len(images):,} training images ({how})")
    return True


def frozen(model):
    """Names of the parameters that do not train (requires_grad False)."""
    return sorted(name for name, p in model.named_parameters() if not p.requires_grad)


def freeze(model, names):
    """Freeze the parameters `names` again on a resumed run: a whitened stem is frozen by its init,
    which a resume does not repeat, and a trainable copy would not continue bit for bit."""
    names = set(names)
    for name, p in model.named_parameters():
        if name in names:
            p.requires_grad_(False)
