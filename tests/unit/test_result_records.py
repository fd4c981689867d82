"""What jobfit's result backend keeps of a message (``shared.result_backend``): pure rules,
no Redis (``tests/integration/test_bounded_results.py`` stores them)."""

from __future__ import annotations

import pytest
from celery import states

from jobfit.shared.celery_app import create_celery_app
from jobfit.shared.config import Settings
from jobfit.shared.result_backend import (
    MAX_ARGUMENTS_BYTES,
    MAX_ERROR_CHARS,
    cut,
    keeps_arguments,
)
from jobfit.shared.schemas import MessageRejectedError

SMALL = ([], {"document": {"id": "r1", "skills": ["Python"]}})
LARGE = ([], {"document": {"id": "r1", "skills": ["z" * MAX_ARGUMENTS_BYTES]}})


@pytest.mark.parametrize(
    "state,arguments,kept",
    [
        (states.SUCCESS, SMALL, True),
        (states.STARTED, SMALL, True),
        ("PROGRESS", SMALL, True),
        (states.SUCCESS, LARGE, False),
        (states.STARTED, LARGE, False),
        (states.FAILURE, SMALL, False),  # the payload of a refused message: failed_messages
        (states.RETRY, SMALL, False),
    ],
)
def test_which_records_keep_the_arguments(state, arguments, kept):
    assert keeps_arguments(state, *arguments) is kept


def test_cut_says_how_long_the_text_was():
    assert cut("short", 10) == "short"
    long = cut("x" * 5_000_000, 100)
    assert len(long) == 100 and long.endswith("[5,000,000 characters, cut]")


def test_an_error_is_stored_with_its_text_cut_and_comes_back_as_its_type():
    backend = create_celery_app(Settings(), with_tasks=False).backend
    stored = backend.prepare_exception(MessageRejectedError("skills.0: " + "z" * 5_000_000))
    assert len(stored["exc_message"][0]) <= MAX_ERROR_CHARS
    back = backend.exception_to_python(stored)
    assert isinstance(back, MessageRejectedError) and str(back).startswith("skills.0: zzz")
    short = backend.prepare_exception(ValueError("bad", 3))
    assert list(short["exc_message"]) == ["bad", 3], "a short error is stored as Celery stores it"
