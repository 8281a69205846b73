"""Checks a running server's API answers against docs/api.yaml with openapi-core.

Usage: python3 tests/api_conformance.py BASE_URL KEY ONLINE_USER

Run by tests/api.rs against a server with channels (a `lobby` default channel, `forum:*`
with history, read-only `news`) and ONLINE_USER connected. Each request is sent for real; its
answer must have the expected status and match the spec for that path, method and status. Every
request this script expects to succeed is also checked against the spec's request schema, so the
spec describes what the server takes and not only what it gives.
"""

import json
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict

BASE, KEY, ONLINE = sys.argv[1], sys.argv[2], sys.argv[3]
SPEC = OpenAPI.from_file_path("docs/api.yaml")


class Request:
    def __init__(self, method, url, body, key):
        parts = urlsplit(url)
        self.host_url = f"{parts.scheme}://{parts.netloc}"
        self.path = parts.path
        self.method = method.lower()
        self.body = body
        self.content_type = "application/json"
        query = [tuple(p.split("=", 1)) for p in parts.query.split("&") if p]
        headers = Headers({"Authorization": f"Bearer {key}"} if key else {})
        self.parameters = RequestParameters(query=ImmutableMultiDict(query), header=headers)


class Response:
    def __init__(self, status, content_type, data):
        self.status_code = status
        self.content_type = content_type
        self.headers = Headers({"Content-Type": content_type})
        self.data = data


checked = 0


def call(method, path, body=None, status=200, key=KEY, raw=None, in_spec=True):
    """Sends one request, checks its status and its answer against the spec; returns the JSON."""
    global checked
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(BASE + path, data=data, method=method)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            got, ctype, payload = r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        got, ctype, payload = e.code, e.headers["Content-Type"], e.read()
    where = f"{method} {path} {body if raw is None else raw!r}"
    assert got == status, f"{where}: status {got}, expected {status}: {payload!r}"
    checked += 1
    if not in_spec:
        return json.loads(payload)
    request = Request(method, BASE + path, data, key)
    if status == 200:
        SPEC.validate_request(request)
    SPEC.validate_response(request, Response(got, ctype, payload))
    return json.loads(payload)


# Publishing: as the site, on behalf of a user, into a read-only channel; and every refusal.
first = call("POST", "/api/publish", {"channel": "forum:1", "content": "site notice"})["id"]
second = call("POST", "/api/publish",
              {"channel": "forum:1", "content": "hi", "user_id": "9", "username": "nine"})["id"]
assert second > first
call("POST", "/api/publish", {"channel": "news", "content": "down at 22:00"})
call("POST", "/api/publish", {"content": "to the default channel"})
call("POST", "/api/publish", {"channel": "nowhere", "content": "x"}, status=404)
call("POST", "/api/publish", {"channel": "forum:1", "content": "   "}, status=400)
call("POST", "/api/publish", {"channel": "forum:1"}, status=400)
call("POST", "/api/publish", {"channel": "forum:1", "content": "x", "extra": 1}, status=400)
call("POST", "/api/publish", {"channel": 5, "content": "x"}, status=400)
call("POST", "/api/publish", raw=b"{not json", status=400)
call("POST", "/api/publish", {"content": "x"}, status=401, key="wrong-key-" + "x" * 30)
call("POST", "/api/publish", {"content": "x"}, status=401, key=None)

# History and delete.
history = call("GET", "/api/history?channel=forum:1")
assert [m["id"] for m in history["messages"]] == [first, second], history
assert "user_id" not in history["messages"][0]
call("GET", f"/api/history?channel=forum:1&since={first}&limit=1")
call("GET", "/api/history?channel=forum:1&limit=0", status=400)
call("GET", "/api/history?channel=forum:1&since=-1", status=400)
call("GET", "/api/history?channel=nowhere", status=404)
assert call("DELETE", f"/api/messages/{first}") == {"id": first, "channel": "forum:1"}
call("DELETE", f"/api/messages/{first}", status=404)
call("DELETE", "/api/messages/zero", status=400)
history = call("GET", "/api/history?channel=forum:1")
assert [m["id"] for m in history["messages"]] == [second], history

# Presence.
presence = call("GET", "/api/presence")
assert presence["channel"] == "lobby" and ONLINE in [u["user_id"] for u in presence["users"]]
call("GET", "/api/presence?channel=forum:2")
call("GET", "/api/presence?channel=nowhere", status=404)

# Moderation.
call("POST", "/api/mute", {"user_id": "9", "for_secs": 600, "channel": "forum:1"})
call("POST", "/api/mute", {"user_id": "9", "until": 4102444800, "reason": "calm down"})
call("POST", "/api/mute", {"user_id": "9"}, status=400)
call("POST", "/api/mute", {"user_id": "9", "until": 1}, status=400)
assert len(call("GET", "/api/mutes")["mutes"]) == 2
call("DELETE", "/api/mute/9?channel=forum:1")
call("DELETE", "/api/mute/9?channel=forum:1", status=404)
call("POST", "/api/ban", {"user_id": "9", "for_secs": 3600, "reason": "spam"})
call("POST", "/api/ban", {"user_id": "10"})
call("POST", "/api/ban", {"user_id": "", "for_secs": 1}, status=400)
call("POST", "/api/ban", {"user_id": "9", "for_secs": 1, "until": 4102444800}, status=400)
bans = call("GET", "/api/bans")["bans"]
assert [b["user_id"] for b in bans] == ["10", "9"] and bans[0]["until"] is None, bans
call("DELETE", "/api/ban/10")
call("DELETE", "/api/ban/10", status=404)
call("POST", "/api/disconnect", {"user_id": "nobody-here", "reason": "test"})
call("POST", "/api/disconnect", {"reason": "no user"}, status=400)

# Info, and what is not there.
info = call("GET", "/api/info")
assert info["bans"] == 1 and info["mutes"] == 1, info
assert "error" in call("GET", "/api/nothing", status=404, in_spec=False)
assert "error" in call("GET", "/api/publish", status=405, in_spec=False)
print(f"api conformance: {checked} requests, every answer matches docs/api.yaml")
