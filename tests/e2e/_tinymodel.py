"""Write a tiny random-weight llama-architecture GGUF for end-to-end tests.

The model is nonsense on purpose: what the tests need is a real llama.cpp
server doing real tokenisation, batching, slots and context accounting, and
that needs only a file that loads.  Two layers of width 64 and a byte-fallback
vocabulary of a few hundred tokens keep it well under a megabyte, so it is
written fresh for every test session instead of being downloaded.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

__all__ = ["write_tiny_llama"]

_EMBED = 64
_FFN = 128
_HEADS = 4
_LAYERS = 2
_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [
        gguf.TokenType.UNKNOWN,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
    ]
    scores = [0.0, 0.0, 0.0]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(gguf.TokenType.BYTE)
        scores.append(0.0)
    pieces = ["\u2581"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces += ["\u2581" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces += ["\u2581the", "\u2581and", "\u2581hello", "\u2581world"]
    for i, piece in enumerate(pieces):
        tokens.append(piece)
        types.append(gguf.TokenType.NORMAL)
        scores.append(-float(i) / 10.0 - (0.0 if len(piece) > 1 else 5.0))
    return tokens, scores, [int(t) for t in types]


def write_tiny_llama(path: Path, *, context_length: int = 2048, seed: int = 0) -> Path:
    """Write the model to ``path`` and return it."""
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab()
    n_vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("lmgate-tiny-llama")
    w.add_context_length(context_length)
    w.add_embedding_length(_EMBED)
    w.add_block_count(_LAYERS)
    w.add_feed_forward_length(_FFN)
    w.add_head_count(_HEADS)
    w.add_head_count_kv(_HEADS)
    w.add_rope_dimension_count(_EMBED // _HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(_CHATML)

    def tensor(name: str, *shape: int) -> None:
        data = rng.standard_normal(shape).astype(np.float32)
        if len(shape) == 1:
            data = np.ones(shape, dtype=np.float32)
        else:
            data *= 0.5 / np.sqrt(shape[-1])
        w.add_tensor(name, data)

    tensor("token_embd.weight", n_vocab, _EMBED)
    for i in range(_LAYERS):
        tensor(f"blk.{i}.attn_norm.weight", _EMBED)
        tensor(f"blk.{i}.attn_q.weight", _EMBED, _EMBED)
        tensor(f"blk.{i}.attn_k.weight", _EMBED, _EMBED)
        tensor(f"blk.{i}.attn_v.weight", _EMBED, _EMBED)
        tensor(f"blk.{i}.attn_output.weight", _EMBED, _EMBED)
        tensor(f"blk.{i}.ffn_norm.weight", _EMBED)
        tensor(f"blk.{i}.ffn_gate.weight", _FFN, _EMBED)
        tensor(f"blk.{i}.ffn_up.weight", _FFN, _EMBED)
        tensor(f"blk.{i}.ffn_down.weight", _EMBED, _FFN)
    tensor("output_norm.weight", _EMBED)
    tensor("output.weight", n_vocab, _EMBED)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
