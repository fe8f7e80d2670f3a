"""Fixtures shared by the engine tests: the real SmolLM2 model, loaded once per module."""

import pytest
import torch

from leanstack.llm.loading import load_model


@pytest.fixture(scope="module")
def loaded():
    # one thread: on a small shared CPU, two busy-waiting BLAS threads are slower than one
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model()
    torch.set_num_threads(threads)
