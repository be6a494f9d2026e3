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
    """What the run's pictures need of pyplot (subplots, close, rc_context), drawn on Agg figures of
    their own: pyplot itself is not used, so a caller's backend (a notebook's inline one) and its
    open figures are as they were. Imported without the warnings matplotlib logs about a config or
    cache folder it cannot write (a read-only HOME) or a font cache it builds: it then works from a
    temporary folder, which is all a PNG needs, and nothing there is the user's to act on."""
    import logging

    logger = logging.getLogger("matplotlib")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    finally:
        logger.setLevel(level)
    return _Pictures(matplotlib.rc_context, Figure, FigureCanvasAgg)


class _Pictures:
    """pyplot's subplots/close/rc_context, for figures no pyplot window manager holds."""

    def __init__(self, rc_context, figure, canvas):
        self.rc_context, self._figure, self._canvas = rc_context, figure, canvas

    def subplots(self, *grid, figsize=None):
        fig = self._figure(figsize=figsize)
        self._canvas(fig)  # PNGs through Agg, whatever backend the caller's pyplot uses
        return fig, fig.subplots(*grid)

    def close(self, fig):
        fig.clear()  # nothing else holds it: the garbage collector frees it
