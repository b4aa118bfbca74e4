#!/usr/bin/env python3
"""The local Acquire server: a stand-in for Acquire's case API on loopback.

Faithful to spec/fixtures/api/ (a copy of the API's documentation):
POST /api/v1/crm/messenger/chat/create?contactId=N with a Bearer key.
Records every request (raw bytes) and connection, and misbehaves on
request through /_control/fault. Standard library only (Debian's python3).
"""
import argparse
import base64
import gzip
import json
import os
import re
import signal
import socket
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

API_PATH = "/api/v1/crm/messenger/chat/create"
CONTACT = 597752


def fixture_response(fixtures):
    with open(os.path.join(fixtures, "create-case-response.json"), "rb") as f:
        return f.read().decode("utf-8")


def replace_once(text, old, new):
    if text.count(old) != 1:
        raise SystemExit("fixture: expected exactly one %r" % old)
    return text.replace(old, new)


def reopen_variant(doc):
    """The documented reopen answer (reopen-case.md): same shape, four values changed."""
    doc = replace_once(doc, '"id": 2071,', '"id": 1694,')
    doc = replace_once(doc, '"dateCreated": "2021-03-30T18:21:41.000Z"',
                       '"dateCreated": "2021-03-24T11:08:17.000Z"')
    doc = replace_once(doc, '"dateQueue": "2021-03-30T18:21:41.338Z"',
                       '"dateQueue": "2021-03-24T11:08:17.400Z"')
    doc = replace_once(doc, '"dateUpdated": "2021-03-30T18:21:41.353Z"',
                       '"dateUpdated": "2021-03-24T11:08:17.498Z"')
    return doc


TITLE = '"title": "string"'
DESCRIPTION = '"description": "I\'m reopening the closed case"'


def echo(doc, body):
    """data.title and data.description echo the request's title and message."""
    title = body.get("title")
    message = body.get("message")
    text = message.get("message") if isinstance(message, dict) else None
    doc = doc.replace(TITLE, '"title": ' + json.dumps(title, ensure_ascii=False), 1)
    doc = doc.replace(DESCRIPTION, '"description": ' + json.dumps(text, ensure_ascii=False), 1)
    return doc


class Invalid(Exception):
    pass


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def validate(body):
    """The documented request's types; unknown keys are ignored."""
    if not isinstance(body, dict):
        raise Invalid("Body must be a JSON object")
    for k in ("title", "source", "channel"):
        if k in body and not isinstance(body[k], str):
            raise Invalid("%s must be a string" % k)
    if "mentionUsers" in body:
        v = body["mentionUsers"]
        if not isinstance(v, list) or not all(isinstance(u, str) for u in v):
            raise Invalid("mentionUsers must be an array of strings")
    if "message" in body:
        m = body["message"]
        if not isinstance(m, dict):
            raise Invalid("message must be an object")
        for k in ("type", "message", "translateLangKey"):
            if k in m and not isinstance(m[k], str):
                raise Invalid("message.%s must be a string" % k)
    for k in ("routeAgentId", "agentId", "threadId", "sessionId"):
        if k in body and not is_int(body[k]):
            raise Invalid("%s must be an integer" % k)
    if "isFromCobrowse" in body and not isinstance(body["isFromCobrowse"], bool):
        raise Invalid("isFromCobrowse must be a boolean")
    if "fields" in body:
        f = body["fields"]
        if not isinstance(f, dict):
            raise Invalid("fields must be an object")
        for k, v in f.items():
            if v is not None and not isinstance(v, (str, int, float, bool)):
                raise Invalid("fields.%s must be a string, number, boolean or null" % k)


class Float(float):
    """Marks JSON numbers written with a fraction or exponent."""


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with getattr(self, "lock", threading.Lock()):
            self.requests = []
            self.faults = []
            self.connections = 0
            self.in_flight = 0
            self.max_in_flight = 0


HTML_502 = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
            b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
            b"</body>\r\n</html>\r\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "AcquireLocal/1.0"
    sys_version = ""

    def setup(self):
        super().setup()
        self.conn_id = None     # counted when it carries its first API request,
                                # so control calls never show in the stats

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("acquire_server: " + (fmt % args) + "\n")

    # ---- plumbing ----------------------------------------------------
    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def send(self, status, body, ctype="application/json; charset=utf-8", headers=None,
             close=False):
        headers = dict(headers or {})
        for k in list(headers):
            if k.lower() == "content-type":      # a fault may set its own
                ctype = headers.pop(k)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def send_json(self, status, obj, headers=None):
        self.send(status, json.dumps(obj, separators=(",", ":")).encode(), headers=headers)

    def error(self, status, type_, message):
        obj = {"message": message}
        if type_:
            obj = {"type": type_, "message": message}
        self.send_json(status, obj)

    # ---- control -----------------------------------------------------
    def control(self, method, path):
        st = self.server.state
        body = self.read_body()
        if method == "GET" and path == "/_control/requests":
            with st.lock:
                reqs = list(st.requests)
            return self.send_json(200, {"requests": reqs})
        if method == "GET" and path == "/_control/stats":
            with st.lock:
                stats = {"connections": st.connections, "requests": len(st.requests),
                         "max_in_flight": st.max_in_flight, "in_flight": st.in_flight}
            return self.send_json(200, stats)
        if method == "POST" and path == "/_control/reset":
            st.reset()
            return self.send_json(200, {"ok": True})
        if method == "POST" and path == "/_control/fault":
            rule = json.loads(body or b"{}")
            with st.lock:
                st.faults.append(rule)
            return self.send_json(200, {"ok": True})
        if method == "POST" and path == "/_control/shutdown":
            self.send_json(200, {"ok": True})
            threading.Thread(target=self.server.shutdown, daemon=True).start()
            return None
        return self.error(404, None, "Not found")

    def take_fault(self, contact):
        st = self.server.state
        with st.lock:
            for rule in st.faults:
                want = rule.get("contactId")
                if want is not None and str(want) != str(contact):
                    continue
                times = rule.get("times")
                if times is not None:
                    if times <= 0:
                        continue
                    rule["times"] = times - 1
                return rule
        return None

    # ---- the API -----------------------------------------------------
    def handle_any(self):
        url = urlsplit(self.path)
        if url.path.startswith("/_control/"):
            return self.control(self.command, url.path)
        st = self.server.state
        body = self.read_body()
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        record = {
            "seq": 0, "connection": self.conn_id, "method": self.command, "path": url.path,
            "raw_query": url.query, "query": query,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body_b64": base64.b64encode(body).decode("ascii"), "time": time.monotonic(),
        }
        with st.lock:
            if self.conn_id is None:
                st.connections += 1
                self.conn_id = st.connections
            record["connection"] = self.conn_id
            st.requests.append(record)
            record["seq"] = len(st.requests)
            st.in_flight += 1
            st.max_in_flight = max(st.max_in_flight, st.in_flight)
        try:
            rule = self.take_fault(query.get("contactId"))
            if rule and rule.get("delay") is not None and rule.get("action") != "delay":
                time.sleep(float(rule["delay"]))
            if rule and self.misbehave(rule, url, query, body):
                return None
            return self.api(url, query, body)
        finally:
            with st.lock:
                st.in_flight -= 1

    def api(self, url, query, body, headers=None, transform=None):
        if url.path != API_PATH:
            return self.error(404, None, "Not found")
        if self.command != "POST":
            return self.error(405, None, "Method not allowed")
        auth = self.headers.get("Authorization") or ""
        if auth == "Bearer " + self.server.readonly_key:
            return self.error(403, "ERROR_UNAUTHORIZED_ACCESS", "This API key may not create cases")
        if auth != "Bearer " + self.server.key:
            return self.error(401, "ERROR_UNAUTHORIZED", "Invalid API key")
        contact = query.get("contactId", "")
        if not re.fullmatch(r"[1-9][0-9]*", contact):
            return self.error(400, "ERROR_INVALID_INPUT", "contactId must be a positive integer")
        try:
            data = json.loads(body.decode("utf-8"), parse_float=Float) if body.strip() else {}
            validate(data)
        except (UnicodeDecodeError, ValueError):
            return self.error(400, "ERROR_INVALID_INPUT", "Body is not valid JSON")
        except Invalid as e:
            return self.error(400, "ERROR_INVALID_INPUT", str(e))
        if int(contact) != CONTACT:
            return self.error(404, None, "Contact not found")
        reopen = "threadId" in data and "sessionId" in data
        doc = self.server.reopen if reopen else self.server.doc
        out = echo(doc, data).encode("utf-8")
        if transform:
            return transform(out)
        return self.send(200, out, headers=headers)

    def misbehave(self, rule, url, query, body):
        """Returns True when the rule answered (or refused to)."""
        action = rule.get("action")
        if action == "delay":
            time.sleep(float(rule.get("seconds", 1)))
            return False
        if action == "status":
            status = int(rule.get("status", 500))
            default = b""
            if status == 500:
                default = json.dumps({"type": "ERROR_SERVER_ERROR",
                                      "message": "Internal server error"},
                                     separators=(",", ":")).encode()
            out = rule["body"].encode("utf-8") if "body" in rule else default
            self.send(status, out, ctype=rule.get("content_type", "application/json"),
                      headers=rule.get("headers"))
            return True
        if action == "html":
            self.send(int(rule.get("status", 502)), HTML_502, ctype="text/html",
                      headers=rule.get("headers"))
            return True
        if action == "invalid_json":
            self.send(200, b"<html>not json", ctype="application/json")
            return True
        if action == "redirect":
            self.send(302, b"<html>moved</html>", ctype="text/html",
                      headers={"Location": "/elsewhere"})
            return True
        if action == "big":
            size = int(rule.get("size", 1 << 20))
            pad = "x" * max(0, size)
            self.send(200, json.dumps({"data": {"id": 1, "pad": pad}}).encode())
            return True
        if action == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return True
        if action == "hang":
            self.close_connection = True
            self.connection.settimeout(0.5)
            while not self.server.stopping.is_set():
                try:
                    if self.connection.recv(1, socket.MSG_PEEK) == b"":
                        break          # the client went away
                except socket.timeout:
                    continue
                except OSError:
                    break
            return True
        if action == "truncate":
            def half(out):
                self.send_response(200)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(out)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(out[: len(out) // 2])
                self.wfile.flush()
                self.close_connection = True
            self.api(url, query, body, transform=half)
            return True
        if action == "trickle":
            interval = float(rule.get("interval", 0.5))

            def slow(out):
                self.send_response(200)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.flush()
                try:
                    for i in range(0, len(out), 16):
                        self.wfile.write(out[i:i + 16])
                        self.wfile.flush()
                        time.sleep(interval)
                except OSError:
                    self.close_connection = True
            self.api(url, query, body, transform=slow)
            return True
        if action == "chunked":
            def chunks(out):
                self.send_response(200)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                step = max(1, len(out) // 4)
                for i in range(0, len(out), step):
                    part = out[i:i + step]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            self.api(url, query, body, transform=chunks)
            return True
        if action == "gzip":
            def packed(out):
                if "gzip" in (self.headers.get("Accept-Encoding") or ""):
                    self.send(200, gzip.compress(out), headers={"Content-Encoding": "gzip"})
                else:
                    self.send(200, out)
            self.api(url, query, body, transform=packed)
            return True
        if action == "close":
            self.api(url, query, body, headers={"Connection": "close"})
            self.close_connection = True
            return True
        self.send_json(500, {"message": "unknown fault action %r" % action})
        return True

    do_POST = do_GET = do_PUT = do_DELETE = do_PATCH = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def watch_parent(pid):
    while True:
        time.sleep(0.5)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:
            pass


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file")
    p.add_argument("--parent-pid", type=int)
    p.add_argument("--key", default="test-key")
    p.add_argument("--readonly-key", default="readonly-key")
    p.add_argument("--fixtures", default=os.path.join(here, "..", "fixtures", "api"))
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args()

    if ":" in a.host:
        Server.address_family = socket.AF_INET6
    srv = Server((a.host, a.port), Handler)
    srv.state = State()
    srv.key, srv.readonly_key, srv.verbose = a.key, a.readonly_key, a.verbose
    srv.stopping = threading.Event()
    srv.doc = fixture_response(a.fixtures)
    replace_once(srv.doc, TITLE, TITLE)
    replace_once(srv.doc, DESCRIPTION, DESCRIPTION)
    srv.reopen = reopen_variant(srv.doc)
    scheme = "http"
    control_port = None
    if a.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        scheme = "https"
        # the specs' control calls speak plain HTTP: a second listener,
        # same state, for them
        ctl = Server((a.host, 0), Handler)
        for attr in ("state", "key", "readonly_key", "verbose", "stopping", "doc", "reopen"):
            setattr(ctl, attr, getattr(srv, attr))
        ctl.shutdown = srv.shutdown
        control_port = ctl.server_address[1]
        threading.Thread(target=ctl.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True).start()
    port = srv.server_address[1]
    if a.port_file:
        tmp = a.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d %d %d\n" % (port, os.getpid(), control_port or port))
        os.rename(tmp, a.port_file)
    host = "[%s]" % a.host if ":" in a.host else a.host
    print("listening on %s://%s:%d" % (scheme, host, port), flush=True)
    if a.parent_pid:
        threading.Thread(target=watch_parent, args=(a.parent_pid,), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        srv.serve_forever(poll_interval=0.1)
    finally:
        srv.stopping.set()
        srv.server_close()


if __name__ == "__main__":
    main()
