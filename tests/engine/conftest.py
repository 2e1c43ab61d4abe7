"""The tiny random checkpoint fixture lives in tests/conftest.py; VOCAB is re-exported here."""

from tests.conftest import VOCAB  # noqa: F401
