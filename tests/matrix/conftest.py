"""Fixtures of the model matrix (cases are built once per session, see matrix_cases)."""

import pytest
from matrix_cases import ALL, CAUSAL, TEXT, build


@pytest.fixture(params=ALL)
def any_case(request):
    return build(request.param)


@pytest.fixture(params=TEXT)
def text_case(request):
    return build(request.param)


@pytest.fixture(params=CAUSAL)
def causal_case(request):
    return build(request.param)
