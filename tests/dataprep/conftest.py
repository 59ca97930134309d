"""The dataprep tests share the training tests' tokenizer fixture (SmolLM2's)."""

from tests.training.conftest import tokenizer  # noqa: F401
