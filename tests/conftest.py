"""Fixtures shared by several test modules."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is fastest (and avoids spinning on a busy machine).

    Use it for a whole module with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def rsm_calls(monkeypatch):
    """The shapes of the activations SemanticCKA builds a semantic RSM of (one entry per call
    of ``semantic_sim_parallel`` from measures/semantic.py), to check that RSMs are reused."""
    import simtorch_semantic.measures.semantic as ms

    calls = []
    real = ms.semantic_sim_parallel

    def counting(x, *args, **kwargs):
        calls.append(tuple(x.shape))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(ms, "semantic_sim_parallel", counting)
    return calls
