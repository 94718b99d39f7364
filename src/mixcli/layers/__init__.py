"""Shared Paddle building blocks: norms, rotary embeddings, attention with a KV cache, decoder stacks, ViT blocks."""


def for_inference(layer):
    """Eval mode, and no parameter asks for a gradient: Paddle then records no autograd graph and
    frees activations as soon as they are used (an inference model never calls backward)."""
    layer.eval()
    for param in layer.parameters():
        param.stop_gradient = True
    return layer


def build_for_inference(make, weights, dtype: str | None = None, layout: str | None = None):
    """``make()`` built without initialising its parameters, the checkpoint's tensors loaded into it
    in ``dtype`` (Linear weights transposed when ``layout``, default the weights' own, is torch's),
    ready for inference."""
    import paddle

    from ..weights import linear_weight_names, load_into

    with paddle.LazyGuard():
        layer = make()
    load_into(layer, weights, transpose=linear_weight_names(layer), dtype=dtype, layout=layout)
    return for_inference(layer)
