"""Stateless forward/backward pairs: ``<op>_forward(...) -> (out, cache)`` and
``<op>_backward(dout, cache) -> (d<arg>, ...)``.

Every public function checks its arguments at the boundary through :mod:`lvmcore._validation`
(array library, float32/float64 dtype, shapes against each other, a backward's upstream
gradient against its cache) and raises ValueError or TypeError naming the argument."""

from .activations import (
    ACTIVATIONS,
    log_sigmoid,
    log_sigmoid_backward,
    log_sigmoid_forward,
    relu_backward,
    relu_forward,
    sigmoid,
    sigmoid_backward,
    sigmoid_forward,
    softplus,
    softplus_backward,
    softplus_forward,
    tanh_backward,
    tanh_forward,
)
from .linear import LinearCache, linear_backward, linear_forward
from .poe import PoECache, poe_backward, poe_forward
from .reparam import ReparamCache, reparam_backward, reparam_forward
from .softmax import (
    LogSoftmaxCache,
    LogSumExpCache,
    SoftmaxCache,
    log_softmax_backward,
    log_softmax_forward,
    logsumexp,
    logsumexp_backward,
    logsumexp_forward,
    softmax,
    softmax_backward,
    softmax_forward,
)
from .vq import VQCache, VQFrozen, VQLosses, vq_backward, vq_forward
