"""Web pages cannot drive a local proxy by default (issue 14): the real uvicorn proxy
refuses foreign browser origins, non-JSON POST bodies and unknown Host names; an API key
or an explicit --cors-origins behaves as configured; local browser clients still work."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.integration

EVIL = "https://evil.example"
BODY = b'{"model": "qwen3", "messages": [{"role": "user", "content": "hi"}]}'


@pytest.fixture
def default(proxy_factory):
    return proxy_factory()


def test_simple_cross_site_post_refused(default):
    # The attack: text/plain is a "simple" request (no preflight), and CORS * let the page
    # read the reply.
    r = httpx.post(
        default.v1 + "/chat/completions",
        content=BODY,
        headers={"Content-Type": "text/plain", "Origin": EVIL},
    )
    assert r.status_code == 403, r.text
    assert "access-control-allow-origin" not in r.headers
    assert "cors_origins" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x"]
)
def test_non_json_bodies_refused_415(default, ctype):
    r = httpx.post(default.v1 + "/chat/completions", content=BODY, headers={"Content-Type": ctype})
    assert r.status_code == 415, r.text
    assert r.json()["error"]["code"] == "unsupported_media_type"


def test_foreign_origin_refused_even_for_gets_and_preflight_gets_no_allow(default):
    r = httpx.get(default.v1 + "/models", headers={"Origin": EVIL})
    assert r.status_code == 403
    pre = httpx.options(
        default.v1 + "/chat/completions",
        headers={"Origin": EVIL, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"},
    )  # fmt: skip
    assert pre.headers.get("access-control-allow-origin") is None


@pytest.mark.parametrize("origin", ["http://localhost:8080", "http://127.0.0.1:3000"])
def test_local_browser_origins_allowed(default, origin):
    r = httpx.get(default.v1 + "/models", headers={"Origin": origin})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == origin


def test_dns_rebinding_host_refused(default):
    port = default.base_url.rsplit(":", 1)[1]
    r = httpx.get(default.v1 + "/models", headers={"Host": f"rebind.evil.example:{port}"})
    assert r.status_code == 400
    assert "allowed_hosts" in r.json()["error"]["message"]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        assert httpx.get(default.v1 + "/models", headers={"Host": host}).status_code == 200


def test_json_clients_unchanged(default):
    # The openai SDK sends application/json; curl -d with -H 'Content-Type: application/json'
    # too; a body without Content-Type is parsed as JSON (as FastAPI does).
    for headers in ({"Content-Type": "application/json; charset=utf-8"}, {}):
        r = httpx.post(default.v1 + "/completions", content=b"{}", headers=headers)
        assert r.status_code == 400, r.text  # validation, not 415
        assert r.json()["error"]["param"] == "model"


def test_explicit_origins_and_hosts_as_configured(proxy_factory):
    opened = proxy_factory(cors_origins=["*"], allowed_hosts=["*"])
    r = httpx.get(opened.v1 + "/models", headers={"Origin": EVIL, "Host": "anything.example"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"
    listed = proxy_factory(cors_origins=["https://ui.example"], allowed_hosts=["box.lan"])
    r = httpx.get(
        listed.v1 + "/models", headers={"Origin": "https://ui.example", "Host": "box.lan"}
    )
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://ui.example"
    assert httpx.get(listed.v1 + "/models", headers={"Origin": EVIL}).status_code == 403


def test_with_api_key_any_origin_needs_the_key(proxy_factory):
    keyed = proxy_factory(api_key="k-123")
    r = httpx.get(keyed.v1 + "/models", headers={"Origin": EVIL})
    assert r.status_code == 401
    ok = httpx.get(keyed.v1 + "/models", headers={"Origin": EVIL, "Authorization": "Bearer k-123"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "*"
