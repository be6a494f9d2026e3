"""What the model registry holds for each name: a spec that builds its network for a dataset's
(C, H, W) and class count, and knows the smallest image it can take and the tutorial's numbers;
and the one rule for a class count (`check_classes`: at least MIN_CLASSES).
"""

import operator

from torch import nn

from engine.errors import UsageError

MIN_CLASSES = 2  # one class gives every image the same answer: engine train refuses such data (engine.data.classes)


def check_classes(count):
    """`count`, where a classifier can have that many classes (a whole number, at least MIN_CLASSES); else
    one UsageError. The rule for every class count the engine is given: `engine summary --num-classes`,
    building a model, and the classes of the data a run trains on."""
    try:
        whole = None if isinstance(count, bool) else operator.index(count)  # numpy's integers too
    except TypeError:
        whole = None
    if whole is None or whole < MIN_CLASSES:
        raise UsageError(f"a classifier needs at least {MIN_CLASSES} classes, not {count!r}")
    return whole


class ModelSpec:
    """A network family's recipe. Subclasses are frozen dataclasses with at least:

    source: where the design comes from (e.g. "tutorial 001");
    reference_shape: the (C, H, W) it was designed for, which `engine summary` shows by default;
    reference_params: its parameter count at that shape with 10 classes;
    recipe: Config values `engine train` uses for the flags a user did not pass (None: the
    Config defaults); see engine/recipe.py.
    """

    source: str
    reference_shape: tuple
    reference_params: int
    recipe = None

    def build(self, in_shape, num_classes) -> nn.Module:
        """The network for images of `in_shape` (C, H, W); callers check the shape first."""
        raise NotImplementedError

    def smallest_side(self) -> int:
        """The smallest square image side the network can take (1 if it has no spatial stages)."""
        return 1
