"""Keeping torch.export's, torch.onnx's, onnxscript's and onnxruntime's tooling quiet: their progress
lines, warnings and graph dumps are nothing a user of `engine export` or `engine eval --compile` can
act on. Shared by the exporter, the int8 quantizer and ahead-of-time inference (engine/inference.py);
and matplotlib's, for the run's pictures (`pyplot`).
"""

import contextlib
import io
import logging
import warnings


@contextlib.contextmanager
def quiet_exporter():
    """torch.onnx and onnxscript progress lines and warnings a user cannot act on stay off the terminal.

    Yields the captured text, so a failure can still quote it.
    """
    captured = io.StringIO()
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "torch.export", "torch._dynamo", "torch.fx")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield captured
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def pyplot():
    """matplotlib's pyplot on the Agg backend, imported without the warnings it logs about a config or
    cache folder it cannot write (a read-only HOME) or a font cache it builds: it then works from a
    temporary folder, which is all a PNG needs, and nothing there is the user's to act on."""
    import logging

    logger = logging.getLogger("matplotlib")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    finally:
        logger.setLevel(level)
    return plt
