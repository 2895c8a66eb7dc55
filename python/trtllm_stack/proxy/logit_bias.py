"""OpenAI's ``logit_bias`` as TensorRT-LLM's ``embedding_bias`` tensor.

``logit_bias`` maps token ids (JSON object keys, so strings) to a value in -100..100 that is
added to the token's logit before sampling: -100 effectively bans a token, +100 effectively
forces it. The backend takes the same thing densely: an FP32 ``embedding_bias`` with one
value per row of the engine's logits, added to them in the decoder
(triton_backend/inflight_batcher_llm/src/utils.cc reads it into executor::Request's
embeddingBias; cpp/tensorrt_llm/batch_manager/createNewDecoderRequests.cpp
initializeEmbeddingBias copies it to the decoder). Its length must be the engine's vocabulary
size exactly (``ModelConfig::getVocabSize()``, config.json's pretrained_config.vocab_size,
which is padded past the tokenizer for Qwen3: 151936 vs 151669). A wrong length fails in the
executor's forwardAsync, which terminates every active request of the batch, so the length
comes from the engine (``EngineLimits.vocab_size``), never from the tokenizer.

Built only for a non-empty ``logit_bias``: other requests send no tensor and cost nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from trtllm_stack.proxy.errors import InvalidRequest

_TOKEN_ID = re.compile(r"[0-9]{1,10}")


def embedding_bias(
    logit_bias: Mapping[str, float] | None, vocab_size: int | None
) -> np.ndarray | None:
    """The dense bias for the engine, or None when there is nothing to apply.

    Keys must be decimal token ids below the engine's vocabulary size (OpenAI refuses other
    keys too); values are already bounded to -100..100 by the request model.
    """
    if not logit_bias:
        return None
    ids: list[int] = []
    for key in logit_bias:
        if _TOKEN_ID.fullmatch(key) is None:
            raise InvalidRequest(
                f"logit_bias key {key!r} is not a token id: keys must be token ids written as"
                " decimal integers",
                param="logit_bias",
            )
        ids.append(int(key))
    if vocab_size is None:
        raise InvalidRequest(
            "logit_bias is not available with this engine: its model repository does not give"
            " the vocabulary size (regenerate it with `trtllm-stack model-repo`), or its logits"
            " dtype takes no FP32 bias",
            param="logit_bias",
        )
    for key, token in zip(logit_bias, ids, strict=True):
        if token >= vocab_size:
            raise InvalidRequest(
                f"logit_bias key {key!r} is outside the vocabulary: token ids are 0 to"
                f" {vocab_size - 1}",
                param="logit_bias",
            )
    bias = np.zeros(vocab_size, dtype=np.float32)
    bias[ids] = np.fromiter(logit_bias.values(), dtype=np.float32, count=len(ids))
    return bias
