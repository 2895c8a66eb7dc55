"""Garbage detector on real garbage and real text; smoke check against a local HTTP server."""

import codecs
import contextlib
import io
import itertools
import json
import socket
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from trtllm_stack.engine.smoke import check_smoke_or_raise, garbage_reasons, run_smoke
from trtllm_stack.errors import UserError

# Output of the broken engines described in the seeds (000: Qwen2.5-VL FP8/FP4; 001: bf16 TP4).
SEED_GARBAGE = [
    "addCriterion addCriterion addCriterion addCriterion addCriterion addCriterion",
    "unounounounounounounounounounouno",
    "Sure! unounouno",
]


def real_texts():
    """Prose and technical text shipped with Python itself."""
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return {
        "zen": codecs.decode(this.s, "rot13"),
        "json-doc": json.__doc__,
        "textwrap-doc": textwrap.__doc__,
        "contextlib-doc": contextlib.__doc__,
        "qwen-answer": "<think>\n\n</think>\n\n2 + 2 = 4.",
        "one-word": "Paris",
    }


@pytest.mark.parametrize("text", SEED_GARBAGE)
def test_seed_garbage_is_detected(text):
    assert garbage_reasons(text)


@pytest.mark.parametrize(("name", "text"), real_texts().items())
def test_real_text_is_not_garbage(name, text):
    assert garbage_reasons(text) == [], name


def test_each_detector_names_its_reason():
    assert garbage_reasons("   ") == ["empty output"]
    assert garbage_reasons("Paris \ufffd\ufffd") == ["2 replacement character(s) U+FFFD"]
    assert garbage_reasons("the cat sat the cat sat the cat sat") == [
        "phrase 'the cat sat' repeated back to back"
    ]
    # Three words shuffled over 18 positions: no run, no repeated phrase, just no variety.
    words = " ".join(" ".join(p) for p in itertools.permutations(["alpha", "beta", "gamma"]))
    assert garbage_reasons(words) == ["only 3 distinct words in 18 (ratio 0.17 < 0.3)"]


# --- a tiny OpenAI-compatible server on 127.0.0.1 --------------------------------------------


def make_server(answer_for):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, code, payload):
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/v1/models":
                self._send(
                    200,
                    {"object": "list", "data": [{"id": "qwen3", "object": "model"}]},
                )
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self):
            length = int(self.headers["Content-Length"])
            req = json.loads(self.rfile.read(length))
            prompt = req["messages"][-1]["content"]
            code, content = answer_for(req["model"], prompt)
            if code != 200:
                self._send(code, {"error": {"message": content}})
                return
            msg = {"role": "assistant", "content": content}
            self._send(
                200,
                {"choices": [{"index": 0, "message": msg, "finish_reason": "stop"}]},
            )

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return server


@contextlib.contextmanager
def serving(answer_for):
    server = make_server(answer_for)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def good_model(model, prompt):
    assert model == "qwen3" and prompt.endswith("/no_think")
    if "2+2" in prompt:
        return 200, "<think>\n\n</think>\n\n4"
    if "France" in prompt:
        return 200, "Paris."
    return (
        200,
        "The ocean covers most of the planet. Its depths are still largely unexplored.",
    )


def test_smoke_passes_on_a_sane_server():
    with serving(good_model) as url:
        results = run_smoke(url)
    check_smoke_or_raise(results)
    assert [r.text for r in results][:2] == ["4", "Paris."]


def test_smoke_fails_on_garbage_naming_prompt_and_reason():
    with serving(lambda m, p: (200, SEED_GARBAGE[0])) as url:
        results = run_smoke(url + "/v1", model="qwen3")
    with pytest.raises(UserError) as exc:
        check_smoke_or_raise(results)
    msg = str(exc.value)
    assert msg.startswith("smoke check failed (3/3 prompts)")
    assert "word 'addcriterion' repeated 6 times in a row" in msg
    assert "expected answer '4'" in msg and "expected answer 'Paris'" in msg
    assert exc.value.exit_code == 1


def test_smoke_fails_on_wrong_answer_without_garbage():
    with serving(lambda m, p: (200, "I am not sure.")) as url:
        results = run_smoke(url)
    assert [bool(r.problems) for r in results] == [True, True, False]


def test_http_error_and_unreachable_server():
    with (
        serving(lambda m, p: (500, "engine crashed")) as url,
        pytest.raises(UserError, match="returned HTTP 500"),
    ):
        run_smoke(url)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError, match="cannot reach"):
        run_smoke(f"http://127.0.0.1:{port}", timeout=5)
    with pytest.raises(UserError, match="expected the http"):
        run_smoke("localhost:9000")
