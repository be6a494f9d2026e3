"""engine: fast training and inference for small image CNNs.

Nothing happens at import; `engine.cli.main` is the entry point and `engine.train.train` the
library call.
"""

__version__ = "0.1.0"
