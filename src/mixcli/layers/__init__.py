"""Shared Paddle building blocks: norms, rotary embeddings, attention with a KV cache, decoder stacks."""


def for_inference(layer):
    """Eval mode, and no parameter asks for a gradient: Paddle then records no autograd graph and
    frees activations as soon as they are used (an inference model never calls backward)."""
    layer.eval()
    for param in layer.parameters():
        param.stop_gradient = True
    return layer
