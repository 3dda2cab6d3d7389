"""Where a run model's parts are in its Keras graph: the backbone and the pooled embedding.

The engines (a two-output model for monitoring and the out-of-distribution check) and Grad-CAM
read the same graph, so these live beside the models.
"""

from __future__ import annotations

from typing import Any


def find_backbone(model: Any) -> Any | None:
    """The nested backbone sub-model: the layer named "backbone", else the last nested model."""
    import keras

    try:
        return model.get_layer("backbone")
    except ValueError:
        nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
        return nested[-1] if nested else None


def outer_node(layer: Any, model: Any) -> Any | None:
    """The call node of `layer` inside `model`'s graph (Keras 3 keeps one per call).

    The first connected node is the model's own; later ones come from re-calling the layer.
    """
    import keras

    for node in getattr(layer, "_inbound_nodes", []):
        try:
            keras.Model(model.inputs, node.output_tensors)
            return node
        except Exception:  # the node belongs to another graph
            continue
    return None


def embedding_model(model: Any) -> Any | None:
    """A keras.Model from the model's input to [logits, pooled embedding], or None.

    The embedding is the input of the final "logits" Dense layer (after dropout, which is the
    identity at inference, i.e. the backbone's pooled output).
    """
    import keras

    try:
        head = model.get_layer("logits")
    except ValueError:
        head = model.layers[-1]
    node = outer_node(head, model)
    if node is None or not node.input_tensors:
        return None
    feat = node.input_tensors[0]
    if len(feat.shape) != 2:
        return None
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    try:
        return keras.Model(inputs, [model.outputs[0], feat])
    except Exception:
        return None

