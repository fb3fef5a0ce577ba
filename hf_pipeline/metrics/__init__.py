"""Metric modules shipped with hf-pipeline, loadable offline with ``evaluate``.

``evaluate.load("accuracy")`` fetches the module from the Hub; these live in this package, one folder per metric
(``<name>/<name>.py``), so that ``load_metric(name)`` works without a network.
"""

from __future__ import annotations

from pathlib import Path


def load_metric(name: str, **kwargs):
    """The shipped ``evaluate`` metric ``name`` (a folder beside this file), e.g. ``load_metric("gsm8k_accuracy")``."""
    import evaluate

    return evaluate.load(str(Path(__file__).parent / name), **kwargs)
