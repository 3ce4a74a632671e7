import dataclasses

import numpy as np
import pytest

from utils.activations import extract
from utils.models import load_model


@pytest.mark.parametrize("name,n_layers,hidden,kind", [
    ("minilm", 7, 384, "encoder"),
    ("mpnet", 13, 768, "encoder"),
    ("smollm2", 31, 576, "decoder"),
])
def test_offline_models_give_documented_shapes(name, n_layers, hidden, kind):
    loaded = load_model(name, device="cpu")
    assert (loaded.n_layers, loaded.hidden, loaded.kind) == (n_layers, hidden, kind)
    sentences = [["The", "cat", "sat", "on", "the", "mat."], ["Stocks", "fell", "sharply."]]
    acts = extract(loaded, sentences, level="word", progress=False)
    assert acts.shape == (9, n_layers, hidden)
    assert np.isfinite(acts).all()
    sent = extract(loaded, ["A fine film.", "A dreadful, boring film."], level="sentence", progress=False)
    assert sent.shape == (2, n_layers, hidden)
    # different inputs give different top-layer vectors (the weights are real, not zeros)
    assert np.abs(sent[0, -1] - sent[1, -1]).max() > 1e-3


def test_unknown_model_offline_names_the_offline_models():
    with pytest.raises(OSError, match="Offline models: minilm, mpnet, smollm2"):
        load_model("surely-not-a-model-name-xyz", device="cpu")


def test_truncated_model_reproduces_the_first_layers(minilm):
    from utils.models import truncated

    sentences = [["The", "cat", "sat", "on", "the", "mat."]]
    full = extract(minilm, sentences, level="word", progress=False)
    with truncated(minilm.model, 3):
        short = extract(dataclasses.replace(minilm, n_layers=4), sentences, level="word", progress=False)
    np.testing.assert_allclose(short, full[:, :4], atol=1e-5)
    assert len(minilm.model.encoder.layer) == 6  # restored
    with pytest.raises(ValueError, match="between 0 and 6"):
        truncated(minilm.model, 9)
