import dataclasses

import numpy as np
import pytest

from utils.activations import extract
from utils.models import load_model


@pytest.mark.parametrize(
    "name,n_layers,hidden,kind",
    [
        ("minilm", 7, 384, "encoder"),
        ("mpnet", 13, 768, "encoder"),
        ("smollm2", 31, 576, "decoder"),
    ],
)
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


def test_a_folder_that_is_not_a_model_says_so(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OSError, match=r"this folder is not a model \(no config.json / no \*.safetensors weights\)"):
        load_model(str(empty), device="cpu")
    (empty / "config.json").write_text("{}")
    (empty / "pytorch_model.bin").write_bytes(b"\0")
    with pytest.raises(OSError, match=r"not a model \(no \*.safetensors weights\) \(it holds pickled \*.bin"):
        load_model(str(empty), device="cpu")
    with pytest.raises(OSError, match="there is no model folder './no-such-folder'"):
        load_model("./no-such-folder", device="cpu")


def test_model_identity_names_the_weights(tmp_path):
    from utils.models import model_identity, model_kind
    from utils.resources import RESOURCES

    assert model_identity("minilm") == RESOURCES["minilm"].archives[0].sha256
    assert model_kind("minilm") == "encoder" and model_kind("smollm2") == "decoder"
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"weights-1")
    first = model_identity(str(folder))
    assert first.startswith("local-sha256:") and model_kind(str(folder)) == "decoder"
    assert model_identity(str(folder)) == first  # same files, same identity
    (folder / "model.safetensors").write_bytes(b"weights-2")
    assert model_identity(str(folder)) not in (first, None)
