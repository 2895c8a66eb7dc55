"""Hot-loop costs of two per-request / per-token pieces (python/docs/bench.md):

- parsing one streamed Triton response (protobuf + ``parse_response``), per token;
- tokenizing a ~260-token chat prompt with the Qwen3 tokenizer, and how much of that is
  the pre-tokenizer (its split regex).

Run from the repo root: python python/scripts/perf/per_call_costs.py
These run hot, in a loop; inside the proxy each runs cold between other processes'
work and costs several times more.
"""

import os
import struct
import timeit

os.environ["HF_HUB_OFFLINE"] = "1"
from tritonclient.grpc import service_pb2

from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir, load_tokenizer
from trtllm_stack.triton import tensors as T
from trtllm_stack.triton.client import parse_response


def per_call_us(fn, n: int) -> float:
    fn()
    return timeit.timeit(fn, number=n) / n * 1e6


def one_token_response() -> bytes:
    msg = service_pb2.ModelStreamInferResponse()
    resp = msg.infer_response
    resp.model_name, resp.model_version, resp.id = "tensorrt_llm", "1", "9" * 32
    resp.parameters[T.FINAL_RESPONSE_PARAM].bool_param = False
    for name, shape, value in ((T.OUTPUT_IDS, [1, 1], 12345), (T.SEQUENCE_LENGTH, [1], 1)):
        out = resp.outputs.add()
        out.name, out.datatype = name, "INT32"
        out.shape.extend(shape)
        resp.raw_output_contents.append(struct.pack("<i", value))
    return msg.SerializeToString()


def main() -> None:
    data = one_token_response()
    parse = service_pb2.ModelStreamInferResponse.FromString

    def parse_one() -> None:
        parse_response(parse(data).infer_response)

    print(f"parse one streamed response: {per_call_us(parse_one, 200_000):.1f} us")

    backend = load_tokenizer(bundled_qwen3_tokenizer_dir()).backend_tokenizer
    text = (
        "<|im_start|>user\n"
        + "The quick brown fox jumps over the lazy dog. " * 25
        + "<|im_end|>\n<|im_start|>assistant\n"
    )
    n_tokens = len(backend.encode(text, add_special_tokens=False).ids)
    encode = per_call_us(lambda: backend.encode(text, add_special_tokens=False), 2000)
    pre = per_call_us(lambda: backend.pre_tokenizer.pre_tokenize_str(text), 2000)
    print(f"tokenize a {n_tokens}-token prompt: {encode:.0f} us")
    print(f"the pre-tokenizer alone (its split regex) on the same text: {pre:.0f} us")


if __name__ == "__main__":
    main()
