"""Pytest fixtures. Shared helpers live in helpers.py (a plain module: ``from helpers import ...``);
importing it here also sets up the test environment (offline Hub, quiet transformers, threads)."""

from __future__ import annotations

import pytest
from helpers import make_bert, make_gpt2


@pytest.fixture
def gpt2():
    return make_gpt2()


@pytest.fixture
def bert():
    return make_bert()
