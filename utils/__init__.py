"""Shared toolkit for reproducing *Analyzing Redundancy in Pretrained Transformer Models*.

Start reading at ``activations`` (how a store of hidden states is made), then ``similarity`` and
``clustering`` (general redundancy), ``probing`` and ``ranking`` (task-specific redundancy),
``selection`` (the efficient feature-based transfer pipeline) and ``report`` (the paper's claims and
the written readings of the results). Data flows one way::

    resources -> data -> models -> activations -> similarity -> clustering
                                               -> probing -> ranking -> selection -> report / plots

One idea per module; the shared pieces underneath:

- ``validation``: public input checks used by every analysis module (shapes, labels, "is this a
  regression target?", the array behind a store);
- ``moments``: the row-chunk rule and ``RunningMoments`` (streaming mean / variance);
- ``metrics``: scores and bootstrap intervals;
- ``training``: the batched probe-training engine (L-BFGS and Adam) behind ``probing``.

Quantities and their shapes (scikit-learn's words):

- ``activations``: array of shape (n_items, n_layers, hidden); one row per word (word-level tasks)
  or per sentence (sentence-level tasks); layer 0 is the embedding output.
- ``X``: array of shape (n_samples, n_features); activations flattened to
  ``n_features = n_layers * hidden`` with neuron index ``layer * hidden + unit``.
- ``y``: array of shape (n_samples,) of class labels (or real values for a regression probe).
"""

__version__ = "0.1.0"
