"""What the model registry holds for each name: a spec that builds its network for a dataset's
(C, H, W) and class count, and knows the smallest image it can take and the tutorial's numbers.
"""

from torch import nn


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
