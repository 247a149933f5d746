"""``tip``: every protocol step as a command that reads and writes plain files.

The buyer and the seller run on different machines and exchange only files:

    buyer : tip keygen keys/                       -> keys/public_context.tip (send)
    buyer : (train with TIPCallback)               -> bundle/ (send bundle/spec.json + the model)
    buyer : tip query --bundle bundle --keys keys -o query.tip              (send query.tip)
    seller: tip sketch --model M --spec spec.json --dataset D -o store/
    seller: tip score --store store --query query.tip --context public_context.tip -o scores.tip
    buyer : tip reveal --scores scores.tip --keys keys [--budget 1000]
    seller: tip open --opening scores.opening.json --corpus BOUGHT -o delivery-opening.json
    buyer : tip verify --scores scores.tip --opening delivery-opening.json --dataset delivered/
                       --model M --bundle bundle --keys keys

Exit codes: 0 success, 1 bad input or a refused operation (one-line message naming the
problem and the fix), 2 bad command-line usage, 130 interrupted.

Commands live by party: :mod:`.buyer`, :mod:`.seller`, :mod:`.both`; :mod:`.common` holds the
app, errors and argument types. Nothing heavy (torch, transformers, TenSEAL) is imported
until a command runs, so ``tip --help`` is instant.
"""

from __future__ import annotations

import importlib
import sys

from .common import app

for _party in ("buyer", "seller", "both"):  # registers the commands on `app`, in this order in --help
    importlib.import_module(f".{_party}", __name__)

__all__ = ["app", "main"]


def main() -> None:  # console-script entry point
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - commands report their own interruption
        print("tip: interrupted", file=sys.stderr)
        sys.exit(130)
