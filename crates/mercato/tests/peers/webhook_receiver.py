"""A webhook receiver for Mercato's tests that verifies every request with the
`standardwebhooks` package (an implementation of the Standard Webhooks spec
independent of Mercato's).

Prints `PORT <n>` on its first line, then serves:
  POST /hook          a delivery: verified against every secret it was given;
                      answers `fail_next` times with `fail_status`, then 204
  POST /_secrets      {"secrets": ["whsec_…", …]}: the secrets to verify with
  POST /_mode         {"fail_next": n, "fail_status": 500, "delay": seconds}
  GET  /_received     every delivery seen: id, type, verified, status answered
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

state = {"secrets": [], "fail_next": 0, "fail_status": 500, "delay": 0.0, "received": []}
lock = threading.Lock()


def verified(body, headers):
    """Valid for at least one secret; during a rotation every signature sent
    must belong to one of the secrets given."""
    for secret in state["secrets"]:
        try:
            Webhook(secret).verify(body, headers)
            return True
        except Exception:
            continue
    return False


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, payload=None):
        body = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/_received":
            with lock:
                self.reply(200, state["received"])
        else:
            self.reply(404)

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        if self.path == "/_secrets":
            with lock:
                state["secrets"] = json.loads(body)["secrets"]
            return self.reply(204)
        if self.path == "/_mode":
            with lock:
                state.update(json.loads(body))
            return self.reply(204)
        if self.path != "/hook":
            return self.reply(404)
        headers = {k.lower(): v for k, v in self.headers.items()}
        if state["delay"]:
            time.sleep(state["delay"])
        with lock:
            ok = verified(body, headers)
            if state["fail_next"] > 0:
                state["fail_next"] -= 1
                status = state["fail_status"]
            else:
                status = 204 if ok else 400
            try:
                event_type = json.loads(body).get("type")
            except ValueError:
                event_type = None
            state["received"].append(
                {
                    "id": headers.get("webhook-id"),
                    "type": event_type,
                    "verified": ok,
                    "signatures": len(headers.get("webhook-signature", "").split()),
                    "status": status,
                    "at": time.time(),
                }
            )
        self.reply(status, {"received": True} if status < 300 else {"error": "try again"})


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"PORT {server.server_address[1]}", flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    sys.exit(0)
