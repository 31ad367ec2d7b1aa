"""``torch.compile`` as hco runs it, for every compiled function: the V-Net's forward
(:func:`hco_cli.models.vnet.compile_forward`) and the frameworks' losses
(``compile_losses`` in the training config).

Two process settings and two inductor options, the same for every compiled function so that
arms and runs stay symmetric:

- torch's donated buffers off: the hierarchical optimizers take two gradients through one
  forward (g_L with ``retain_graph=True``, then g_U), which a backward compiled with donated
  buffers refuses. AOTAutograd reads the setting at the first backward, lazily, so it is set
  for the process rather than around a call.
- a higher recompile limit: one compiled function serves every network of the process (student,
  teacher, pre-training, validation and its shorter last batch, CMT's extra networks), each
  gradient mode, train/eval mode, shape and dtype a variant of it; past torch's default of 8
  variants it warns and runs the rest eagerly.
- ``inplace_buffers`` off: torch's on-disk compile cache does not tell a backward compiled with
  donated buffers (its default: an earlier process, another program) from one without. Such a
  cached backward was reused and wrote into the saved activations that the second gradient
  reads, which came back silently wrong (torch 2.13; tests/models/test_compile.py). Without
  in-place buffers the backward writes into no input and its cache key differs from the
  default's, so such an entry is never found.
- ``fallback_random`` on: dropout draws its masks through torch's own kernels, as eager does
  (:func:`hco_cli.models.vnet._compiled` says why); functions without random numbers are not
  affected.

The compiler packages are imported inside these functions: about 1 s of import that only
compiling runs should pay (``hco predict``, uncompiled training).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


def prepare_compiling() -> None:
    """The process settings above; idempotent."""
    import torch._dynamo.config as dynamo_config
    import torch._functorch.config as functorch_config

    functorch_config.donated_buffer = False
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)


def compile_options(mode: str) -> dict[str, Any]:
    """Inductor options of torch's ``mode`` ("default", "reduce-overhead" for CUDA graphs,
    "max-autotune-no-cudagraphs") spelled out, with the two options above added."""
    import torch._inductor

    return {**torch._inductor.list_mode_options(mode), "inplace_buffers": False,
            "fallback_random": True}


@functools.cache
def compiled_function(fn: F, mode: str = "default") -> F:
    """``fn`` through ``torch.compile`` with the settings above, static shapes; one compiled
    function per (function, mode) in the process."""
    prepare_compiling()
    return torch.compile(fn, options=compile_options(mode), dynamic=False)  # type: ignore[return-value]
