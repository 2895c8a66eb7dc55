"""The one module that knows Triton tensor names, dtypes and shapes.

Names follow TensorRT-LLM's triton_backend/all_models/inflight_batcher_llm/tensorrt_llm/
config.pbtxt. Everything that talks to the ``tensorrt_llm`` model (proxy, benchmark, scripted
engine, pre/postprocessing) goes through here; this module imports only numpy so that it can
also be used inside Triton's Python backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

ENGINE_MODEL = "tensorrt_llm"
ENSEMBLE_MODEL = "ensemble"
PREPROCESSING_MODEL = "preprocessing"
POSTPROCESSING_MODEL = "postprocessing"

# Response parameter Triton sets on the last response of a decoupled request.
FINAL_RESPONSE_PARAM = "triton_final_response"
# Request parameter asking Triton to forward a final response that carries no tensors. The
# TensorRT-LLM backend may end a stream with such a flag-only response (e.g. at max tokens);
# without this the client never learns the stream ended (the seeds' hang at max_tokens).
EMPTY_FINAL_RESPONSE_PARAM = "triton_enable_empty_final_response"

# Parameters our model-repo generator adds to the tensorrt_llm model config so that clients
# can read the engine's limits from Triton (the TensorRT-LLM backend ignores unknown keys).
PARAM_MAX_INPUT_LEN = "trtllm_stack_max_input_len"
PARAM_MAX_SEQ_LEN = "trtllm_stack_max_seq_len"
# The engine's vocabulary size (config.json pretrained_config.vocab_size): the length an
# embedding_bias must have. The proxy needs it to build one; the tokenizer's own size is
# smaller for padded vocabularies (Qwen3: 151936 rows, 151669 tokenizer ids).
PARAM_VOCAB_SIZE = "trtllm_stack_vocab_size"

# Guided decoding parameters of the tensorrt_llm model config, as the backend reads them
# (triton_backend/inflight_batcher_llm/src/model_instance_state.cc,
# getGuidedDecodingConfigFromParams): both set -> XGrammar guided decoding is on.
PARAM_GUIDED_DECODING_BACKEND = "guided_decoding_backend"
PARAM_XGRAMMAR_TOKENIZER_INFO_PATH = "xgrammar_tokenizer_info_path"
# The guide types the C++ backend maps (triton_backend/inflight_batcher_llm/src/utils.cc,
# getGuidedDecodingParamsFromTensors); an unknown type is silently treated as no guide there.
GUIDE_TYPES = ("json", "json_schema", "regex", "ebnf_grammar")

# tensorrt_llm model inputs
INPUT_IDS = "input_ids"
INPUT_LENGTHS = "input_lengths"
REQUEST_OUTPUT_LEN = "request_output_len"
END_ID = "end_id"
PAD_ID = "pad_id"
STREAMING = "streaming"
STOP_WORDS_LIST = "stop_words_list"
BAD_WORDS_LIST = "bad_words_list"
EXCLUDE_INPUT_IN_OUTPUT = "exclude_input_in_output"
TEMPERATURE = "temperature"
TOP_K = "runtime_top_k"
TOP_P = "runtime_top_p"
SEED = "seed"
REPETITION_PENALTY = "repetition_penalty"
PRESENCE_PENALTY = "presence_penalty"
FREQUENCY_PENALTY = "frequency_penalty"
MIN_TOKENS = "min_tokens"
RETURN_LOG_PROBS = "return_log_probs"
BEAM_WIDTH = "beam_width"
STOP = "stop"
NUM_RETURN_SEQUENCES = "num_return_sequences"
GUIDED_DECODING_GUIDE_TYPE = "guided_decoding_guide_type"
GUIDED_DECODING_GUIDE = "guided_decoding_guide"
# FP32, dims [-1], optional, allow_ragged_batch (triton_backend/all_models/
# inflight_batcher_llm/tensorrt_llm/config.pbtxt; tensorrtllm_backend c2e65b8 lines 145-151).
# The backend squeezes [1, V] to [V] and an empty one means no bias (utils.cc 1006-1016 at
# c2e65b8); the executor adds it to the logits and requires V == the engine's vocab size.
EMBEDDING_BIAS = "embedding_bias"

# tensorrt_llm model outputs
OUTPUT_IDS = "output_ids"
SEQUENCE_LENGTH = "sequence_length"
CUM_LOG_PROBS = "cum_log_probs"
OUTPUT_LOG_PROBS = "output_log_probs"

# Triton wire dtype per input, as tritonclient spells it.
WIRE_DTYPES: dict[str, str] = {
    INPUT_IDS: "INT32",
    INPUT_LENGTHS: "INT32",
    REQUEST_OUTPUT_LEN: "INT32",
    END_ID: "INT32",
    PAD_ID: "INT32",
    STREAMING: "BOOL",
    STOP_WORDS_LIST: "INT32",
    BAD_WORDS_LIST: "INT32",
    EXCLUDE_INPUT_IN_OUTPUT: "BOOL",
    TEMPERATURE: "FP32",
    TOP_K: "INT32",
    TOP_P: "FP32",
    SEED: "UINT64",
    REPETITION_PENALTY: "FP32",
    PRESENCE_PENALTY: "FP32",
    FREQUENCY_PENALTY: "FP32",
    MIN_TOKENS: "INT32",
    RETURN_LOG_PROBS: "BOOL",
    BEAM_WIDTH: "INT32",
    STOP: "BOOL",
    NUM_RETURN_SEQUENCES: "INT32",
    GUIDED_DECODING_GUIDE_TYPE: "BYTES",  # TYPE_STRING in config.pbtxt
    GUIDED_DECODING_GUIDE: "BYTES",
    EMBEDDING_BIAS: "FP32",
}

_NP_DTYPES = {"INT32": np.int32, "FP32": np.float32, "UINT64": np.uint64, "BOOL": np.bool_}


@dataclass(frozen=True, slots=True)
class EngineRequest:
    """One generation request to the ``tensorrt_llm`` model, in token ids."""

    prompt_ids: Sequence[int]
    max_tokens: int
    end_id: int
    pad_id: int
    streaming: bool = True
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    min_tokens: int | None = None
    stop_token_sequences: Sequence[Sequence[int]] = ()
    return_log_probs: bool = False
    exclude_input_in_output: bool = True
    # Guided decoding (XGrammar in the backend): one of GUIDE_TYPES, and the guide text
    # (schema JSON, regex or EBNF; none for "json").
    guide_type: str | None = None
    guide: str | None = None
    # logit_bias as the backend takes it: float32 [vocab_size], added to the logits; None
    # (the usual case) sends no tensor. Not compared: arrays have no truth value.
    embedding_bias: np.ndarray | None = field(default=None, compare=False)


def _scalar(name: str, value: float | int | bool) -> np.ndarray:
    return np.array([[value]], dtype=_NP_DTYPES[WIRE_DTYPES[name]])


def _string(value: str) -> np.ndarray:
    return np.array([[value.encode("utf-8")]], dtype=np.object_)


def wire_bytes(array: np.ndarray) -> bytes:
    """An input's raw_input_contents: numbers as they lie in memory; strings (BYTES) as
    Triton serialises them, each element a 4-byte little-endian length, then its bytes (the
    backend strips those 4 bytes again, utils.cc getGuidedDecodingParamsFromTensors)."""
    if array.dtype != np.object_:
        return np.ascontiguousarray(array).tobytes()
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(len(data).to_bytes(4, "little"))
        parts.append(data)
    return b"".join(parts)


def to_word_list(sequences: Sequence[Sequence[int]]) -> np.ndarray:
    """TensorRT-LLM's stop/bad word format, batch of one: shape [1, 2, L].

    Row 0 holds all sequences' ids back to back, row 1 their cumulative end offsets,
    both padded with -1 (as tensorrt_llm.runtime.to_word_list_format does).
    """
    flat: list[int] = []
    offsets: list[int] = []
    for seq in sequences:
        flat.extend(seq)
        offsets.append(len(flat))
    width = max(len(flat), len(offsets), 1)
    out = np.full((1, 2, width), -1, dtype=np.int32)
    out[0, 0, : len(flat)] = flat
    out[0, 1, : len(offsets)] = offsets
    return out


def from_word_list(word_list: np.ndarray) -> list[list[int]]:
    """Inverse of :func:`to_word_list` for one batch entry (shape [2, L])."""
    ids, offsets = word_list[0], word_list[1]
    out: list[list[int]] = []
    start = 0
    for end in offsets:
        if end < 0:
            break
        out.append([int(t) for t in ids[start:end]])
        start = int(end)
    return out


def engine_inputs(req: EngineRequest) -> list[tuple[str, np.ndarray]]:
    """(name, array) pairs for the ``tensorrt_llm`` model; batch dimension 1."""
    ids = np.asarray(req.prompt_ids, dtype=np.int32).reshape(1, -1)
    inputs = [
        (INPUT_IDS, ids),
        (INPUT_LENGTHS, _scalar(INPUT_LENGTHS, ids.shape[1])),
        (REQUEST_OUTPUT_LEN, _scalar(REQUEST_OUTPUT_LEN, req.max_tokens)),
        (END_ID, _scalar(END_ID, req.end_id)),
        (PAD_ID, _scalar(PAD_ID, req.pad_id)),
        (STREAMING, _scalar(STREAMING, req.streaming)),
        (EXCLUDE_INPUT_IN_OUTPUT, _scalar(EXCLUDE_INPUT_IN_OUTPUT, req.exclude_input_in_output)),
    ]
    optional: list[tuple[str, float | int | None]] = [
        (TEMPERATURE, req.temperature),
        (TOP_P, req.top_p),
        (TOP_K, req.top_k),
        (SEED, req.seed),
        (REPETITION_PENALTY, req.repetition_penalty),
        (PRESENCE_PENALTY, req.presence_penalty),
        (FREQUENCY_PENALTY, req.frequency_penalty),
        (MIN_TOKENS, req.min_tokens),
    ]
    inputs.extend((name, _scalar(name, v)) for name, v in optional if v is not None)
    if req.stop_token_sequences:
        inputs.append((STOP_WORDS_LIST, to_word_list(req.stop_token_sequences)))
    if req.return_log_probs:
        inputs.append((RETURN_LOG_PROBS, _scalar(RETURN_LOG_PROBS, True)))
    if req.guide_type is not None:
        inputs.append((GUIDED_DECODING_GUIDE_TYPE, _string(req.guide_type)))
        if req.guide is not None:
            inputs.append((GUIDED_DECODING_GUIDE, _string(req.guide)))
    if req.embedding_bias is not None:
        bias = np.ascontiguousarray(req.embedding_bias, dtype=np.float32)
        inputs.append((EMBEDDING_BIAS, bias.reshape(1, -1)))
    return inputs


@dataclass(frozen=True, slots=True)
class EngineChunk:
    """What one response of the ``tensorrt_llm`` model carries for beam 0."""

    token_ids: list[int]
    log_probs: list[float] | None
    final: bool


def requested_outputs(req: EngineRequest) -> tuple[str, ...]:
    """The outputs to ask Triton for. Without a list Triton returns every output of the
    model (logits, batch_index, ...) in every streamed response."""
    if req.return_log_probs:
        return (OUTPUT_IDS, SEQUENCE_LENGTH, OUTPUT_LOG_PROBS)
    return (OUTPUT_IDS, SEQUENCE_LENGTH)


def decode_engine_outputs(
    as_numpy: Callable[[str], np.ndarray | None], final: bool, want_log_probs: bool = False
) -> EngineChunk:
    """Read beam 0 of one response.

    ``output_ids`` is [batch, beam, T]; with exclude_input_in_output and streaming the
    response carries only the new tokens; ``sequence_length`` [batch, beam] says how many
    of the T positions are valid (the rest is padding).
    """
    ids = as_numpy(OUTPUT_IDS)
    if ids is None or ids.size == 0:
        return EngineChunk([], [] if want_log_probs else None, final)
    seq_len = as_numpy(SEQUENCE_LENGTH)
    row = ids.reshape(-1, ids.shape[-1])[0]
    n = int(seq_len.reshape(-1)[0]) if seq_len is not None and seq_len.size else row.shape[0]
    n = min(n, row.shape[0])
    tokens = row[:n].tolist()
    log_probs: list[float] | None = None
    if want_log_probs:
        lp = as_numpy(OUTPUT_LOG_PROBS)
        # Aligned with output_ids: the first n positions of beam 0 are this response's.
        log_probs = (
            lp.reshape(-1, lp.shape[-1])[0][:n].tolist() if lp is not None and lp.size else []
        )
    return EngineChunk(tokens, log_probs, final)
