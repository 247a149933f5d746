"""`python -m tip_hf.cli` (what `accelerate launch -m tip_hf.cli` runs)."""

from . import main

main()
