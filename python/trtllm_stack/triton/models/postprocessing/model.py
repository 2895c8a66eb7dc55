"""Triton Python model: token ids -> text, incremental and UTF-8 safe (our own code).

In a streamed ensemble request every engine response reaches this model as a separate
request. Triton hands the ensemble request's id to every step, so a multi-byte character
split across two responses is carried over under that id (send an "id" with
generate_stream). An entry lives only while such a partial character is pending, so the
state stays tiny and bounded. (Triton does not let a step mix inputs from the decoupled
engine and from preprocessing, so a key of our own cannot be passed along instead.)
"""

import codecs
import json
from collections import OrderedDict

import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer

from trtllm_stack.text.detokenizer import build_byte_table

_MAX_PENDING = 65536  # bound on requests with a partial character in flight


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        tokenizer = AutoTokenizer.from_pretrained(
            config["parameters"]["tokenizer_dir"]["string_value"], local_files_only=True
        )
        self.table = build_byte_table(tokenizer, skip_special_tokens=True)
        self.tokenizer = tokenizer
        self.pending = OrderedDict()

    def _bytes(self, ids):
        if self.table is None:
            return self.tokenizer.decode(ids, skip_special_tokens=True).encode("utf-8")
        n = len(self.table)
        return b"".join(self.table[i] if 0 <= i < n else b"" for i in ids)

    def _decode(self, key, ids):
        decoder = self.pending.pop(key, None) if key is not None else None
        if decoder is None:
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text = decoder.decode(self._bytes(ids), final=key is None)
        if key is not None and decoder.getstate()[0]:
            self.pending[key] = decoder
            while len(self.pending) > _MAX_PENDING:
                self.pending.popitem(last=False)
        return text

    def execute(self, requests):
        responses = []
        for request in requests:
            tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()
            lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()
            key = request.request_id() or None
            # tokens: [batch, beam, T]; lengths: [batch, beam]. Beam 0 of each batch entry.
            tokens = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])
            lengths = lengths.reshape(lengths.shape[0], -1)
            texts = []
            for b in range(tokens.shape[0]):
                n = int(lengths[b, 0])
                texts.append(self._decode(key, tokens[b, 0, :n].tolist()).encode("utf-8"))
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("OUTPUT", np.array(texts, dtype=object))]
                )
            )
        return responses
