"""Tensor-name module: request encoding and response decoding."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from trtllm_stack.triton import tensors as T
from trtllm_stack.triton.client import build_request, parse_response


@given(st.lists(st.lists(st.integers(0, 200_000), min_size=1, max_size=6), max_size=5))
def test_word_list_round_trip(seqs):
    packed = T.to_word_list(seqs)
    assert packed.shape[:2] == (1, 2) and packed.dtype == np.int32
    assert T.from_word_list(packed[0]) == seqs


def test_engine_inputs_shapes_and_optional_fields():
    req = T.EngineRequest(
        [1, 2, 3],
        10,
        end_id=7,
        pad_id=8,
        temperature=0.5,
        seed=42,
        stop_token_sequences=[[5]],
    )
    inputs = dict(T.engine_inputs(req))
    assert inputs[T.INPUT_IDS].tolist() == [[1, 2, 3]]
    assert inputs[T.INPUT_LENGTHS].tolist() == [[3]]
    assert inputs[T.REQUEST_OUTPUT_LEN].tolist() == [[10]]
    assert inputs[T.SEED].dtype == np.uint64
    assert inputs[T.TEMPERATURE].dtype == np.float32
    assert T.TOP_P not in inputs and T.RETURN_LOG_PROBS not in inputs
    for name, array in inputs.items():
        assert array.shape[0] == 1, name


def test_protobuf_request_and_response_round_trip():
    req = T.EngineRequest([11, 12], 4, end_id=1, pad_id=0, return_log_probs=True)
    msg = build_request(req, "tensorrt_llm", "rid")
    assert msg.id == "rid" and msg.parameters[T.EMPTY_FINAL_RESPONSE_PARAM].bool_param
    by_name = {t.name: (t, raw) for t, raw in zip(msg.inputs, msg.raw_input_contents, strict=True)}
    tensor, raw = by_name[T.INPUT_IDS]
    assert tensor.datatype == "INT32" and list(tensor.shape) == [1, 2]
    assert np.frombuffer(raw, np.int32).tolist() == [11, 12]

    from tritonclient.grpc import service_pb2

    resp = service_pb2.ModelInferResponse()
    for name, dtype, array in [
        (T.OUTPUT_IDS, "INT32", np.array([[[5, 6, 0]]], np.int32)),
        (T.SEQUENCE_LENGTH, "INT32", np.array([[2]], np.int32)),
        (T.OUTPUT_LOG_PROBS, "FP32", np.array([[[-0.5, -0.25, 0.0]]], np.float32)),
    ]:
        out = resp.outputs.add()
        out.name, out.datatype = name, dtype
        out.shape.extend(array.shape)
        resp.raw_output_contents.append(array.tobytes())
    resp.parameters[T.FINAL_RESPONSE_PARAM].bool_param = True
    chunk = parse_response(resp, want_log_probs=True)
    # sequence_length says 2 of the 3 positions are real.
    assert chunk.token_ids == [5, 6] and chunk.final
    assert chunk.log_probs == [-0.5, -0.25]
    empty = parse_response(service_pb2.ModelInferResponse())
    assert empty.token_ids == [] and not empty.final


def test_guide_inputs_are_triton_bytes_tensors():
    from tritonclient.utils import serialize_byte_tensor

    schema = '{"type": "object", "title": "Ünïcode"}'
    req = T.EngineRequest([1], 4, end_id=1, pad_id=0, guide_type="json_schema", guide=schema)
    msg = build_request(req, "tensorrt_llm", "rid")
    by_name = {t.name: (t, raw) for t, raw in zip(msg.inputs, msg.raw_input_contents, strict=True)}
    for name, value in [
        (T.GUIDED_DECODING_GUIDE_TYPE, "json_schema"),
        (T.GUIDED_DECODING_GUIDE, schema),
    ]:
        tensor, raw = by_name[name]
        assert tensor.datatype == "BYTES" and list(tensor.shape) == [1, 1]
        # Same bytes as Triton's own client library produces for a string tensor.
        expected = serialize_byte_tensor(np.array([[value.encode()]], dtype=np.object_))
        assert raw == (expected.item() if expected.dtype == np.object_ else expected.tobytes())
    # "json" needs no guide text; no guide type, no guide tensors.
    only_type = dict(T.engine_inputs(T.EngineRequest([1], 4, 1, 0, guide_type="json")))
    assert T.GUIDED_DECODING_GUIDE_TYPE in only_type and T.GUIDED_DECODING_GUIDE not in only_type
    assert T.GUIDED_DECODING_GUIDE_TYPE not in dict(T.engine_inputs(T.EngineRequest([1], 4, 1, 0)))
