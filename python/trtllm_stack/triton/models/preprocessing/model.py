"""Triton Python model: text -> token ids for the tensorrt_llm model (our own code).

Tensor names follow TensorRT-LLM's inflight_batcher_llm/preprocessing. The prompt is used
as given (apply a chat template before sending, or use the OpenAI proxy which does).
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer

from trtllm_stack.triton import tensors as T


def _strings(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return []
    out = []
    for item in tensor.as_numpy().reshape(-1):
        text = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
        if text:
            out.append(text)
    return out


def _int(request, name, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return int(tensor.as_numpy().reshape(-1)[0]) if tensor is not None else default


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = config["parameters"]
        self.tokenizer = AutoTokenizer.from_pretrained(
            params["tokenizer_dir"]["string_value"], local_files_only=True
        )
        self.max_input_len = int(params["max_input_len"]["string_value"])
        self.end_id = self.tokenizer.eos_token_id
        self.pad_id = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.end_id
        )

    def _word_list(self, words):
        return T.to_word_list([self.tokenizer.encode(w, add_special_tokens=False) for w in words])[
            0
        ]

    def execute(self, requests):
        responses = []
        for request in requests:
            query = _strings(request, "QUERY")
            ids = self.tokenizer.encode(query[0] if query else "", add_special_tokens=False)
            if not ids:
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError("empty text_input"))
                )
                continue
            if len(ids) > self.max_input_len:
                responses.append(
                    pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(
                            f"prompt has {len(ids)} tokens, the engine accepts at most"
                            f" {self.max_input_len}"
                        )
                    )
                )
                continue
            out_len = _int(request, "REQUEST_OUTPUT_LEN", 16)
            tensors = [
                pb_utils.Tensor("INPUT_ID", np.array([ids], dtype=np.int32)),
                pb_utils.Tensor("REQUEST_INPUT_LEN", np.array([[len(ids)]], dtype=np.int32)),
                pb_utils.Tensor(
                    "BAD_WORDS_IDS", self._word_list(_strings(request, "BAD_WORDS_DICT"))[None]
                ),
                pb_utils.Tensor(
                    "STOP_WORDS_IDS", self._word_list(_strings(request, "STOP_WORDS_DICT"))[None]
                ),
                pb_utils.Tensor(
                    "OUT_END_ID", np.array([[_int(request, "END_ID", self.end_id)]], dtype=np.int32)
                ),
                pb_utils.Tensor(
                    "OUT_PAD_ID", np.array([[_int(request, "PAD_ID", self.pad_id)]], dtype=np.int32)
                ),
                pb_utils.Tensor("OUT_REQUEST_OUTPUT_LEN", np.array([[out_len]], dtype=np.int32)),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
