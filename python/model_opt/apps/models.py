"""The one registry of the models the demo and the benchmarks build (random weights, no download).

* `DEMO_MODELS`: torchvision classifiers the demo trains (`classifier`, 10 classes);
* `BENCH_MODELS`: the MODel model set, in its paper's order, and a Llama-style decoder, as training or
  inference examples at a batch size (`example`: the model, its inputs, its targets) with their loss
  (`loss_for`). BERT, GPT-2 and Llama need `transformers`;
* `LARGE_MODELS`: GPT-2 medium and a 1.1B-parameter Llama-style decoder, for `fit` (built under fake
  tensors there).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from model_opt.errors import ArgumentError

#: Models the demo knows how to build (torchvision classifiers taking 3-channel images).
DEMO_MODELS = [
    "resnet18",
    "resnet34",
    "resnet50",
    "alexnet",
    "vgg11",
    "mobilenet_v2",
    "efficientnet_b0",
    "squeezenet1_0",
]

NUM_CLASSES = 10


def classifier(name: str) -> nn.Module:
    """A torchvision classifier of `DEMO_MODELS` with `NUM_CLASSES` classes."""
    import torchvision

    if name not in DEMO_MODELS:
        raise ArgumentError(f"unknown model {name!r}; use one of {', '.join(DEMO_MODELS)}")
    return getattr(torchvision.models, name)(weights=None, num_classes=NUM_CLASSES)


#: The MODel set, in its paper's order, and a Llama-style decoder (see `_hf_model`).
BENCH_MODELS = [
    "alexnet",
    "resnet18",
    "resnet50",
    "vgg11",
    "mobilenet_v2",
    "efficientnet_b0",
    "googlenet",
    "squeezenet",
    "vit_b_16",
    "transformer",
    "bert",
    "gpt2",
    "llama",
]

#: Larger token models that `fit` builds under fake tensors (no memory of their size is used; see
#: `model_opt.fit.prepare_model`): GPT-2 medium (355M parameters) and a Llama-style decoder of 1.1B
#: parameters (TinyLlama's shape: 22 layers of width 2048, grouped-query attention with 4 key/value
#: heads). Building one for real needs its weights' memory (4.4 GB for the 1.1B in float32).
LARGE_MODELS = ["gpt2_medium", "llama_1b"]

#: Every model `example` builds.
ALL_MODELS = BENCH_MODELS + LARGE_MODELS


def _image_batch(batch: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    return (torch.randn(batch, 3, 224, 224),), torch.randint(0, 1000, (batch,))


def _vision(name: str) -> Callable[[int], tuple[nn.Module, tuple[torch.Tensor, ...], torch.Tensor]]:
    import torchvision

    def make(batch: int) -> tuple[nn.Module, tuple[torch.Tensor, ...], torch.Tensor]:
        ctor = {"squeezenet": "squeezenet1_0"}.get(name, name)
        kwargs: dict[str, Any] = {"weights": None}
        if name == "googlenet":
            kwargs.update(aux_logits=False, init_weights=False)
        model = getattr(torchvision.models, ctor)(**kwargs)
        return (model, *_image_batch(batch))

    return make


class _Seq2Seq(nn.Module):
    """`nn.Transformer` with its default size (d_model 512, 6+6 layers), sequences of 64 tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Transformer()

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        return self.body(src, tgt)


def _sequence_batch(batch: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    seq = 64
    return (torch.randn(seq, batch, 512), torch.randn(seq, batch, 512)), torch.randn(seq, batch, 512)


def _transformer(batch: int) -> tuple[nn.Module, tuple[torch.Tensor, ...], torch.Tensor]:
    return (_Seq2Seq(), *_sequence_batch(batch))


#: The vocabulary sizes of the configs `_hf_model` builds (transformers' defaults; Llama's below).
_VOCAB = {"bert": 30522, "gpt2": 50257, "llama": 32000, "gpt2_medium": 50257, "llama_1b": 32000}


def _token_batch(name: str, batch: int, seq: int = 128) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    ids = torch.randint(0, _VOCAB[name], (batch, seq))
    return (ids,), ids


#: Llama-style decoders (RMSNorm, rotary, SwiGLU, untied head): hidden size, intermediate size, layers,
#: attention heads, key/value heads, longest sequence. ``llama`` is at GPT-2-small's size; ``llama_1b``
#: has TinyLlama's shape (1.1B parameters, grouped-query attention).
_LLAMA_SHAPES = {"llama": (768, 3072, 12, 12, 12, 512), "llama_1b": (2048, 5632, 22, 32, 4, 2048)}


def _hf_model(name: str) -> Callable[[int], tuple[nn.Module, tuple[torch.Tensor, ...], torch.Tensor]]:
    def make(batch: int) -> tuple[nn.Module, tuple[torch.Tensor, ...], torch.Tensor]:
        import transformers  # optional: random weights from a config, no download

        class LogitsOnly(nn.Module):
            def __init__(self, inner: nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, ids: torch.Tensor) -> torch.Tensor:
                return self.inner(input_ids=ids).logits

        if name == "bert":
            config = transformers.BertConfig()
            inner = transformers.BertForMaskedLM(config)
        elif name == "gpt2":
            config = transformers.GPT2Config()
            inner = transformers.GPT2LMHeadModel(config)
        elif name == "gpt2_medium":
            config = transformers.GPT2Config(n_embd=1024, n_layer=24, n_head=16)
            inner = transformers.GPT2LMHeadModel(config)
        else:
            hidden, intermediate, layers, heads, kv_heads, positions = _LLAMA_SHAPES[name]
            config = transformers.LlamaConfig(
                hidden_size=hidden,
                intermediate_size=intermediate,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                num_key_value_heads=kv_heads,
                vocab_size=_VOCAB[name],
                max_position_embeddings=positions,
            )
            inner = transformers.LlamaForCausalLM(config)
        (ids,), targets = _token_batch(name, batch)
        return LogitsOnly(inner), (ids,), targets

    return make


def example_factory(name: str) -> Callable[[int], tuple[nn.Module, tuple[torch.Tensor, ...], torch.Tensor]]:
    if name == "transformer":
        return _transformer
    if name in _VOCAB:
        return _hf_model(name)
    return _vision(name)


def loss_for(name: str) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    if name == "transformer":
        return nn.functional.mse_loss
    if name in _VOCAB:
        return lambda logits, ids: nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())
    return nn.functional.cross_entropy


#: The longest sequence each token model's config takes (its position embeddings).
MAX_SEQ_LEN = {"bert": 512, "gpt2": 1024, "llama": 512, "gpt2_medium": 1024, "llama_1b": 2048}


def check_name(name: str) -> None:
    """Raises `ArgumentError` unless `name` is one of `ALL_MODELS`."""
    if name not in ALL_MODELS:
        raise ArgumentError(f"unknown model {name!r}; use one of {ALL_MODELS}")


def batch_of(
    name: str, batch: int, seq_len: int | None = None
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Inputs and targets of one batch of `batch` for model `name` of `ALL_MODELS`, without building
    the model (what `example` returns with it). `seq_len` (token models only: `MAX_SEQ_LEN`) replaces
    their default of 128 tokens."""
    check_name(name)
    if name in _VOCAB:
        if seq_len is not None and not 1 <= seq_len <= MAX_SEQ_LEN[name]:
            raise ArgumentError(f"{name} takes sequences of 1 to {MAX_SEQ_LEN[name]} tokens, not {seq_len}")
        return _token_batch(name, batch, 128 if seq_len is None else seq_len)
    if seq_len is not None:
        raise ArgumentError(f"{name} takes no sequence length; token models do: {sorted(_VOCAB)}")
    if name == "transformer":
        return _sequence_batch(batch)
    return _image_batch(batch)


def example(name: str, batch: int) -> tuple[nn.Module, tuple[torch.Tensor, ...], torch.Tensor]:
    """Model `name` of `ALL_MODELS` with inputs and targets of one batch of `batch`."""
    check_name(name)
    return example_factory(name)(batch)
