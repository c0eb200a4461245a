"""A byte-level BPE tokenizer trained, in seconds, on the pretraining corpus only."""
from __future__ import annotations

from transformers import PreTrainedTokenizerFast

__all__ = ["EOS", "train_bpe"]

EOS = "<|endoftext|>"  # GPT-2's document separator; the only special token (no pad token is added)


def train_bpe(docs: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a GPT-2-style byte-level BPE of ``vocab_size`` entries on ``docs``.

    Byte-level means every string (tweets with emoji, code) can be encoded, with no unknown token.
    """
    from tokenizers import ByteLevelBPETokenizer

    if vocab_size < 257 + 1:
        raise ValueError(f"vocab_size must be > 257 (256 bytes + {EOS}), got {vocab_size}")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(docs, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS, unk_token=None,
                                   model_max_length=10**6)
