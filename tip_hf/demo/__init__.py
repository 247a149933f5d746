"""``tip demo``: the whole marketplace on real offline data (see :mod:`tip_hf.demo.run`).

Modules: ``run`` (:func:`run_demo`, :class:`DemoConfig`, :class:`DemoResult`), ``corpora`` (the
buyer's split and the seller's eight corpora), ``training`` (the Trainer, the eval loss and the
process-state scope), ``assets`` (the real MiniLM, movie-review and SMS data, offline).
"""

from __future__ import annotations

from .corpora import demo_corpora
from .run import DemoConfig, DemoResult, run_demo

__all__ = ["DemoConfig", "DemoResult", "demo_corpora", "run_demo"]
