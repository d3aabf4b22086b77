"""A byte-level BPE tokenizer built in memory, for the tiny twins (no hub access).

Every byte is one token, so any text round-trips. A few merges give the single-token option letters
" A" ... " F" that the multiple-choice scoring reads, and each family's special tokens are added on
top, so the stock processors and chat templates work exactly as with the real tokenizers.
"""

from __future__ import annotations

from collections.abc import Sequence

import tokenizers
from tokenizers import decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPACE = "Ġ"  # how the byte-level alphabet spells a space
OPTION_LETTERS = "ABCDEF"


def byte_level_tokenizer(
    special_tokens: Sequence[str], *, eos_token: str, pad_token: str, bos_token: str | None = None
) -> PreTrainedTokenizerFast:
    """Byte tokens, then the " A".." F" merges, then `special_tokens` (ids in that order)."""
    vocab = {symbol: index for index, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges = [(SPACE, letter) for letter in OPTION_LETTERS]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    tokenizer.add_special_tokens({"additional_special_tokens": list(special_tokens)})
    tokenizer.eos_token, tokenizer.pad_token = eos_token, pad_token
    if bos_token is not None:
        tokenizer.bos_token = bos_token
    return tokenizer
