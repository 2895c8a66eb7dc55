"""Triton Python-backend model standing in for ``tensorrt_llm`` on CPU.

Same inputs, outputs, dtypes and decoupled streaming semantics as TensorRT-LLM's backend:
one response per token while streaming; the last response flagged final (at max tokens it
carries the last token; at EOS it is an empty response, as the real backend sends);
stop words end generation; non-streaming sends one response; a cancelled request stops
within one token. Requests run concurrently as coroutines on one event-loop thread.
Limits as the real executor enforces them (texts in triton/backend_errors.py): at most
``scripted_batch_slots`` requests generate at once and the rest wait in arrival order
(inflight batching's queue); a prompt over the repository's max input length fails when it is
taken from the queue; prompt + max tokens over max_seq_len is shortened, not failed.
``embedding_bias`` (FP32 [1, V]; Triton checks dtype and rank against config.pbtxt) must
have V == the repository's vocab size, else the request fails with the executor's text; an
empty one is no bias, as the backend reads it (utils.cc).
On MPI ranks > 0 it blocks in initialize, as TensorRT-LLM's leader mode does, so that
tritonserver on those ranks never opens its ports.
"""

import asyncio
import json
import os
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

from trtllm_stack.triton import backend_errors
from trtllm_stack.triton import tensors as T
from trtllm_stack.triton.scripted import BiasRule, ScriptedModel, ends_with_any, token_stream


def _param(config, key, default):
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return default if value == "" or value.startswith("${") else value


def _string_input(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    value = tensor.as_numpy().reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _scalar(request, name, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    return tensor.as_numpy().reshape(-1)[0].item()


class _StepError(Exception):
    """A request the executor fails in its step; the message is the backend's text."""


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self._event_log = _param(config, "scripted_event_log", "")
        self._log_lock = threading.Lock()
        rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
        self._log(
            {
                "event": "init",
                "rank": rank,
                "pid": os.getpid(),
                "env": {k: v for k, v in os.environ.items() if k.startswith("NCCL_")},
            }
        )
        if rank > 0:
            # Leader mode: worker ranks never finish loading; rank 0 serves.
            while True:
                time.sleep(3600)
        tokenizer = Tokenizer.from_file(
            os.path.join(_param(config, "tokenizer_dir", ""), "tokenizer.json")
        )
        self._model = ScriptedModel(
            tokenizer, int(_param(config, "scripted_default_reply_tokens", "200"))
        )
        self._delay_ms = float(_param(config, "scripted_token_delay_ms", "0"))
        self._exclude_input_default = (
            _param(config, "exclude_input_in_output", "false").lower() == "true"
        )
        # Guided decoding as the C++ backend configures it: on when both parameters are set
        # (model_instance_state.cc, getGuidedDecodingConfigFromParams).
        self._guided = None
        info_path = _param(config, T.PARAM_XGRAMMAR_TOKENIZER_INFO_PATH, "")
        if _param(config, T.PARAM_GUIDED_DECODING_BACKEND, "") == "xgrammar" and info_path:
            from trtllm_stack.triton.scripted_guide import GuidedDecoding

            self._guided = GuidedDecoding(info_path)
        self._max_input_len = int(_param(config, T.PARAM_MAX_INPUT_LEN, "0")) or None
        self._max_seq_len = int(_param(config, T.PARAM_MAX_SEQ_LEN, "0")) or None
        self._vocab_size = int(_param(config, T.PARAM_VOCAB_SIZE, "0")) or None
        self._slots_total = max(1, int(_param(config, "scripted_batch_slots", "64")))
        self._executor_ids = iter(range(1, 1 << 62))
        self._loop = asyncio.new_event_loop()
        # Created on the loop's thread below: asyncio primitives belong to one loop.
        self._slots = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def _log(self, record):
        if not self._event_log:
            return
        line = json.dumps(record) + "\n"
        with self._log_lock, open(self._event_log, "a", encoding="utf-8") as f:
            f.write(line)

    def execute(self, requests):
        for request in requests:
            asyncio.run_coroutine_threadsafe(self._generate(request), self._loop)
        return None

    async def _generate(self, request):
        sender = request.get_response_sender()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._slots_total)
        queued_at = time.monotonic()
        try:
            if not await self._wait_for_slot(request):
                # Cancelled while queued: the executor drops it without generating.
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                self._log(
                    {
                        "event": "request",
                        "request_id": request.request_id(),
                        "outcome": "cancelled",
                        "output_tokens": 0,
                        "queued": True,
                    }
                )
                return
        except Exception as exc:
            sender.send(
                pb_utils.InferenceResponse(error=pb_utils.TritonError(f"scripted engine: {exc}")),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
            return
        queued_ms = round((time.monotonic() - queued_at) * 1000, 1)
        try:
            await self._run(request, sender, queued_ms)
        except _StepError as exc:
            sender.send(
                pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
            self._log(
                {
                    "event": "request",
                    "request_id": request.request_id(),
                    "outcome": "step_error",
                    "output_tokens": 0,
                }
            )
        except Exception as exc:  # the stand-in must never leave a stream open
            sender.send(
                pb_utils.InferenceResponse(error=pb_utils.TritonError(f"scripted engine: {exc}")),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
        finally:
            self._slots.release()

    async def _wait_for_slot(self, request):
        """Queue for a batch slot, in arrival order; False if cancelled while waiting.

        One acquire per request, polled without cancelling it, so a waiter keeps its place.
        """
        acquire = asyncio.ensure_future(self._slots.acquire())
        while True:
            done, _ = await asyncio.wait({acquire}, timeout=0.05)
            if done:
                return True
            if request.is_cancelled():
                acquire.cancel()
                try:
                    await acquire
                except asyncio.CancelledError:
                    return False
                self._slots.release()  # it was granted just before the cancel
                return False

    def _refusal(self, prompt_len):
        """The executor's error for a prompt over the limit, None if it fits."""
        if self._max_input_len is None or prompt_len <= self._max_input_len:
            return None
        return backend_errors.executor_error(
            next(self._executor_ids),
            backend_errors.prompt_too_long(prompt_len, self._max_input_len),
        )

    async def _run(self, request, sender, queued_ms=0.0):
        prompt = pb_utils.get_input_tensor_by_name(request, T.INPUT_IDS).as_numpy().reshape(-1)
        prompt_len = int(_scalar(request, T.INPUT_LENGTHS, prompt.shape[0]))
        prompt = prompt[:prompt_len]
        max_tokens = int(_scalar(request, T.REQUEST_OUTPUT_LEN, 16))
        refusal = self._refusal(int(prompt.shape[0]))
        if refusal is not None:
            sender.send(
                pb_utils.InferenceResponse(error=pb_utils.TritonError(refusal)),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
            self._log(
                {
                    "event": "request",
                    "request_id": request.request_id(),
                    "outcome": "prompt_too_long",
                    "output_tokens": 0,
                    "prompt_tokens": int(prompt.shape[0]),
                }
            )
            return
        if self._max_seq_len is not None:
            max_tokens = backend_errors.clamped_max_tokens(
                int(prompt.shape[0]), max_tokens, self._max_seq_len
            )
        end_id = int(_scalar(request, T.END_ID, -1))
        streaming = bool(_scalar(request, T.STREAMING, False))
        exclude_input = bool(
            _scalar(request, T.EXCLUDE_INPUT_IN_OUTPUT, self._exclude_input_default)
        )
        want_log_probs = bool(_scalar(request, T.RETURN_LOG_PROBS, False))
        stop_tensor = pb_utils.get_input_tensor_by_name(request, T.STOP_WORDS_LIST)
        stops = T.from_word_list(stop_tensor.as_numpy()[0]) if stop_tensor is not None else []

        min_tokens = int(_scalar(request, T.MIN_TOKENS, 0))
        bias = self._bias_rule(request)
        guided = await self._guided_run(request)

        plan = self._model.plan(prompt.tolist())
        delay_s = (plan.delay_ms if plan.delay_ms is not None else self._delay_ms) / 1000.0
        generated = []
        log_probs = []
        outcome = "eos"
        final_sent = False
        tokens = token_stream(
            plan.tokens,
            end_id=end_id,
            min_tokens=min_tokens,
            filler=self._model.filler_tokens,
            guided=guided,
            bias=bias,
        )
        for position, token in enumerate(tokens):
            if request.is_cancelled():
                outcome = "cancelled"
                break
            if len(generated) >= max_tokens:
                outcome = "length"
                break
            await asyncio.sleep(delay_s)
            generated.append(token)
            # Deterministic stand-in for a log probability.
            log_probs.append(-0.05 * (1 + position % 7))
            done_length = len(generated) >= max_tokens
            done_stop = ends_with_any(generated, stops)
            if streaming:
                final_sent = done_length or done_stop
                sender.send(
                    self._response([token], log_probs[-1:], want_log_probs),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final_sent else 0,
                )
            if done_stop:
                outcome = "stop_word"
                break
            if done_length:
                outcome = "length"
                break
        # Never ask after the final response: Triton has released the request's factory.
        if not final_sent and request.is_cancelled():
            outcome = "cancelled"

        if not streaming:
            ids = generated if exclude_input else prompt.tolist() + generated
            sender.send(
                self._response(ids, log_probs, want_log_probs),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
        elif not final_sent:
            # EOS (and cancellation) end the stream with a flag-only final response.
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        self._log(
            {
                "event": "request",
                "request_id": request.request_id(),
                "outcome": outcome,
                "output_tokens": len(generated),
                "prompt_tokens": int(prompt.shape[0]),
                "max_tokens": max_tokens,
                "queued_ms": queued_ms,
            }
        )

    def _bias_rule(self, request):
        """The request's BiasRule (None: no bias or nothing extreme in it). A length other
        than the vocab size fails as the executor fails it (backend_errors.step_error)."""
        tensor = pb_utils.get_input_tensor_by_name(request, T.EMBEDDING_BIAS)
        if tensor is None:
            return None
        bias = tensor.as_numpy()
        if bias.ndim == 2 and bias.shape[0] == 1:
            bias = bias[0]  # utils.cc squeezeTensor(originalTensor, 1)
        if bias.ndim == 1 and bias.shape[0] == 0:
            return None  # utils.cc: an empty bias is no bias
        if self._vocab_size is None or bias.ndim != 1 or bias.shape[0] != self._vocab_size:
            raise _StepError(
                backend_errors.step_error(
                    next(self._executor_ids),
                    backend_errors.embedding_bias_shape(self._vocab_size or 0),
                )
            )
        return BiasRule.from_bias(bias, self._model.filler_tokens)

    async def _guided_run(self, request):
        """The request's grammar matcher, or None without a guide. Errors as the backend
        fails such requests (no guided decoding configured; a guide that does not compile)."""
        guide_type = _string_input(request, T.GUIDED_DECODING_GUIDE_TYPE)
        if guide_type not in T.GUIDE_TYPES:
            return None  # the C++ backend maps only these; anything else is no guide there
        if self._guided is None:
            raise RuntimeError(
                "guided decoding is not enabled: set guided_decoding_backend and"
                " xgrammar_tokenizer_info_path in the tensorrt_llm model config"
            )
        await asyncio.to_thread(self._guided.load)
        return self._guided.start(guide_type, _string_input(request, T.GUIDED_DECODING_GUIDE))

    def _response(self, ids, log_probs, want_log_probs):
        outputs = [
            pb_utils.Tensor(T.OUTPUT_IDS, np.array([[ids]], dtype=np.int32).reshape(1, 1, -1)),
            pb_utils.Tensor(T.SEQUENCE_LENGTH, np.array([[len(ids)]], dtype=np.int32)),
        ]
        if want_log_probs:
            lp = np.array(log_probs, dtype=np.float32).reshape(1, 1, -1)
            outputs.append(pb_utils.Tensor(T.OUTPUT_LOG_PROBS, lp))
            outputs.append(
                pb_utils.Tensor(T.CUM_LOG_PROBS, np.array([[lp.sum()]], dtype=np.float32))
            )
        return pb_utils.InferenceResponse(output_tensors=outputs)

    def finalize(self):
        loop = getattr(self, "_loop", None)
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
