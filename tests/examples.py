"""Test fixtures: the package's sample rows, one per task."""

from nlu_helpers.samples import SAMPLE_ROWS as EXAMPLES  # noqa: F401
