"""Model CPU offload for `VideoPipeline` on small GPUs: the text encoder, the DiT and the VAE live
on the CPU and each moves to the GPU only while it runs (at most one component on the GPU).

    pipe.enable_model_cpu_offload("cuda")      # then call / stream the pipeline as usual
    pipe.disable_model_cpu_offload()

The entry points of each component are wrapped (instance attributes over the methods):

    text_encoder   encode, null                  activate only (their inputs are strings)
    dit            forward                       activate, tensor inputs to the GPU, outputs
                   image_inputs (I2V)            back to the caller's device; activate only
    vae            _encode_mean, _decode_frames  (what every encode/decode session calls per
                                                 tile) as the DiT's forward

Activating a component moves the one that ran before back to the offload device. Outputs follow
the inputs: a call whose first tensor argument is on the CPU gets its result on the CPU, so the
pipeline's own device bookkeeping (it puts latents where the DiT's parameters are) keeps
working. Streaming alternates the DiT and the VAE every chunk, so each chunk moves both once:
the price of fitting a small GPU. State that is not a parameter (KV caches, decoder caches)
stays where it was made (on the GPU). `log` records every activation with the placement it
left (tests, debugging).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from mdiff.errors import InvalidInputError

__all__ = ["ENTRY_POINTS", "ModelOffload"]

# component -> (method, move tensors in and out)
ENTRY_POINTS = {
    "text_encoder": (("encode", False), ("null", False)),
    "dit": (("forward", True), ("image_inputs", False)),
    "vae": (("_encode_mean", True), ("_decode_frames", True)),
}


def _first_tensor(args, kwargs) -> Tensor | None:
    return next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None)


def _to(obj, device: torch.device):
    """Tensors (also inside tuples and lists) moved to `device`; anything else as it is."""
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, tuple | list):
        return type(obj)(_to(o, device) for o in obj)
    return obj


class ModelOffload:
    """Moves `components` (name -> module) between `device` and `offload_device` on use."""

    def __init__(self, components: dict[str, nn.Module], device, offload_device="cpu"):
        self.device, self.offload_device = torch.device(device), torch.device(offload_device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise InvalidInputError("model CPU offload to 'cuda' needs a CUDA device; none here")
        self.components = dict(components)
        self.active: str | None = None
        self.log: list[tuple[str, dict[str, str]]] = []
        self._wrapped: list[tuple[nn.Module, str]] = []
        for name, module in self.components.items():
            module.to(self.offload_device)
            for method, move in ENTRY_POINTS.get(name, ()):
                if callable(getattr(module, method, None)):
                    setattr(module, method, self._wrap(name, getattr(module, method), move))
                    self._wrapped.append((module, method))

    def placement(self) -> dict[str, str]:
        """Where each component's parameters are now (a device string, "none" if none)."""
        out = {}
        for name, module in self.components.items():
            p = next(module.parameters(), None)
            out[name] = "none" if p is None else str(p.device)
        return out

    def activate(self, name: str) -> None:
        """Put component `name` on the device, the one active before back on the offload one."""
        if self.active != name:
            if self.active is not None:
                self.components[self.active].to(self.offload_device)
            self.components[name].to(self.device)
            self.active = name
        self.log.append((name, self.placement()))

    def _wrap(self, name: str, fn, move: bool):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            self.activate(name)
            if not move:
                return fn(*args, **kwargs)
            first = _first_tensor(args, kwargs)
            args = tuple(a.to(self.device) if isinstance(a, Tensor) else a for a in args)
            kwargs = {k: v.to(self.device) if isinstance(v, Tensor) else v
                      for k, v in kwargs.items()}  # fmt: skip
            out = fn(*args, **kwargs)
            return out if first is None else _to(out, first.device)

        return call

    def remove(self) -> None:
        """Unwrap the entry points; every component goes back to the offload device."""
        for module, method in self._wrapped:
            delattr(module, method)  # the class's method shows through again
        self._wrapped = []
        for module in self.components.values():
            module.to(self.offload_device)
        self.active = None
