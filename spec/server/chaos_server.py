#!/usr/bin/env python3
"""The chaos server: Acquire's case endpoint on loopback, answering each
request it reads with a behaviour drawn from its own seeded RNG.

It proves "a case is never created twice" from the server's side: every
request it receives is logged (a reception), with what the server decided
(`created`: a case id was assigned; `not_created`: a definitive refusal) and
how the answer was delivered (in full, cut short, garbled, badly framed, not
at all). spec/chaos.lua checks the log against what the client returned.

    chaos_server.py [--host 127.0.0.1] [--port-file F] [--parent-pid P]
                    [--seed S] [--tls-cert C --tls-key K] [--verbose]

The port file gets "PORT PID CONTROL_PORT\\n", written atomically. The
control port is a separate plain HTTP listener: control calls never get
chaos. Standard library only (Debian's python3).

With --tls-cert/--tls-key, PORT speaks TLS: a relay there does the handshake
and passes the bytes to and from the (plain, internal) chaos listener, a FIN
as a bare TCP FIN (no close_notify), a reset as a reset, so every behaviour
below reaches a TLS client as it would a plain one. The log is the chaos
listener's, as without TLS.

Control endpoints (JSON):
    GET  /_control/log        {"seed", "receptions": [...], "pending"} (waits
                              up to 3 s for answers being delivered to finish)
    POST /_control/reset      clears the log, the reads, the cases, the forced
                              behaviours, the weights, the read chaos; reseeds
                              with the seed given, if any: {"seed"?} (without
                              one, the draws go on where they were)
    POST /_control/config     {"seed"?, "answers"?: {name: weight},
                               "deliveries"?: {name: weight},
                               "force"?: [{"answer", "delivery", "variant"?,
                                           "cut"?, "count"?, "idle"?}, ...],
                               "read_chaos"?: p, "read_force"?: [name, ...]}
                              (cut, for trunc_*: a fraction of the answer,
                              "headers": the whole head, "head_open": the
                              status line and the answer's own headers, the
                              head never ended: no Content-Length, no blank line)
                              (force: the next behaviours, in order, before
                              any random one; idle: for idle_close, the
                              seconds before the idle connection is closed)
    GET  /_control/behaviours the names: answers (with their decision),
                              deliveries, garbage variants, read chaos
    POST /_control/shutdown   answers, then stops the server

A reception: {seq, marker (the body's "title"), conn, full (the body was read
completely), decision ("created" | "not_created"), answer, delivery,
variant, status, case_id, body_json (the answer's body is a JSON object),
retry_ok (a 429/503 with Retry-After: 0 delivered complete and readable: see
READABLE), delivered, t}.

The case list, for a client looking up what it may have created (reconcile):
    GET /api/v1/crm/objects/case?where=contactId|eq|N&limit=L&page=P
answered from the cases this server "created" since the last reset: one per
reception with decision "created" (id = its case_id, contactId from the
create's query, title = the marker, description = the sent message text or
null, status "active", dateCreated from this server's clock when it decided),
as acquire_server.py reads that query (parse_case_query, list_cases: where=,
select, limit at most 100, page or offset, ascending ids, count), with a
Bearer key (any; 401 without). A read is not a reception: it has no marker
and is logged apart, in "reads" of /_control/log: {seq, conn, query, status,
chaos, count (the matches), rows (those sent), t}. Reads get no chaos (not
even the idle timer of the answer before them on their connection) unless
asked: "read_chaos": p (0..1) makes each read misbehave with that
probability, drawn from a second RNG seeded from the seed, as one of
READ_CHAOS; "read_force": the next reads' behaviours, in order.
"""
import json
import os
import random
import re
import select
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from acquire_server import (  # noqa: E402  (the documented answer, parent watching, the case list)
    API_PATH, CONTACT_RE, HTML_502, JSON_ERR, JSON_OK, Invalid, Server as PlainServer,
    checked_fixtures, close_inherited_fds, follow_parent, list_cases, new_case, parse_body,
    parse_case_query, spec_server_arguments, write_port_file)
from chaos_proxy import pipe as relay_pipe, rst as relay_rst  # noqa: E402  (--tls: the relay)
from urllib.parse import parse_qsl  # noqa: E402

# ---------------------------------------------------------------------------
# What the server decides: answers. Each is created (the server processed the
# request and assigned a case id: a 2xx, or a 5xx other than 503, which may
# come after the case was written) or not_created (a definitive refusal).

ANSWERS = {
    # name: (decision, weight)
    "ok": ("created", 30),             # 200, the documented response, data.id = the case id
    "created_201": ("created", 3),     # 201, the same
    "s500": ("created", 3),            # 500 JSON: may have been created
    "s502": ("created", 3),            # 502 HTML from a proxy
    "s504": ("created", 3),            # 504 JSON
    "ok_nonjson": ("created", 3),      # 200 with a body that is not JSON
    "ok_empty": ("created", 2),        # 200 with an empty body
    "no_content": ("created", 2),      # 204
    "s400": ("not_created", 4),
    "s401": ("not_created", 3),
    "s404": ("not_created", 3),
    "s422": ("not_created", 3),
    "redirect": ("not_created", 4),    # 301/302/303/307/308 with a Location
    "retry0": ("not_created", 10),     # 429/503 with Retry-After: 0 (the client may retry)
    "retry_bad": ("not_created", 3),   # 429/503 with a Retry-After the client cannot read
    "retry_huge": ("not_created", 3),  # 429/503 with a Retry-After above the client's cap
    "retry_none": ("not_created", 2),  # 429/503 without Retry-After
    # 407 from Acquire itself (behind a CONNECT tunnel it is Acquire's answer,
    # not the proxy's): weight 0 unless a run asks (through a plain proxy a 407
    # is the proxy's by design)
    "s407": ("not_created", 0),
}

# How the answer goes out (or does not).
DELIVERIES = {
    # complete answers
    "keepalive": 30,        # Content-Length, the connection kept
    "close": 5,             # Content-Length and Connection: close, then FIN
    "eof_body": 4,          # no Content-Length: the body ends at FIN
    "chunked": 5,           # Transfer-Encoding: chunked, random chunk sizes
    "continue100": 3,       # an unasked-for 100 Continue, then the answer
    "trickle": 2,           # the head byte by byte, the body in pieces (~0.25 s)
    "idle_close": 8,        # keepalive, then the idle connection closed after 0-50 ms
    # cut short
    "trunc_fin": 5,         # the answer up to a random byte, then FIN
    "trunc_rst": 5,         # the same, then RST
    "rst_now": 4,           # no answer: RST
    "fin_now": 4,           # no answer: FIN
    "hang": 0.4,            # no answer until the client gives up (costs a timeout)
    # a status line libcurl rejects, or none (see GARBAGE), then close
    "garbage": 8,
    # bad framing, then close
    "cl_long": 2,           # Content-Length larger than the body
    "bad_chunk": 2,         # an invalid chunk size
    "cl_te": 2,             # Content-Length and chunked, inconsistent
    "cl_dup": 2,            # two different Content-Length headers
    "cl_neg": 2,            # a negative Content-Length
    # a partial request: the headers read, not the body; nothing created
    "headers_only_fin": 2,
    "headers_only_rst": 2,
}

FULL = {"keepalive", "close", "eof_body", "chunked", "continue100", "trickle", "idle_close"}
# retry_ok: a 429/503 with Retry-After: 0 went out complete and readable, so a
# client may send the request again: a FULL delivery; cl_te (RFC 9112 6.3:
# Transfer-Encoding overrides Content-Length, and the chunked body is whole);
# cl_dup (one of the two Content-Lengths frames the whole body, and libcurl
# takes the last one); garbage(http2), an "HTTP/2 429" status line, which
# libcurl reads as one. Not an answer cut anywhere, not even in its head.
READABLE = FULL | {"cl_te", "cl_dup"}
READABLE_GARBAGE = {"http2"}
HEADERS_ONLY = {"headers_only_fin", "headers_only_rst"}

GARBAGE = ["hello", "http12", "abc", "foo", "http2", "empty", "binary", "bare_json"]

RETRY_BAD = ["soon", "-1", "1.5", "", "0x10", "Fri, 31 Dec 1999 23:59:59 PST", "1 2"]
RETRY_HUGE = ["31", "3600", "99999999999", None]   # None: an HTTP date a day ahead

REASONS = {200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently",
           302: "Found", 303: "See Other", 307: "Temporary Redirect",
           308: "Permanent Redirect", 400: "Bad Request", 401: "Unauthorized",
           404: "Not Found", 422: "Unprocessable Entity", 429: "Too Many Requests",
           407: "Proxy Authentication Required", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
           504: "Gateway Timeout"}

# How a read misbehaves, when asked to (read_chaos, read_force): each makes the
# lookup's attempt fail, never answers a list other than the true one.
READ_CHAOS = {
    "s500": ("s500", "keepalive"),          # 500 JSON: an http error (not retried)
    "ok_nonjson": ("ok_nonjson", "keepalive"),  # 200 that is not JSON: a decode error
    "rst_now": (None, "rst_now"),           # no answer: RST (network, retried)
    "garbage": (None, "garbage"),           # a status line libcurl rejects, then FIN
    "trunc_rst": (None, "trunc_rst"),       # the list cut short, then RST
}
LIST_PATH = "/api/v1/crm/objects/case"

TITLE_RE = re.compile(rb'"title"\s*:\s*"((?:[^"\\]|\\.)*)"')
FIRST_CASE_ID = 100001


def jdump(obj):
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


class Behaviour:
    __slots__ = ("answer", "delivery", "variant", "cut", "status", "headers", "idle")

    def __init__(self, answer, delivery):
        self.answer, self.delivery = answer, delivery
        self.variant = self.cut = self.status = self.idle = None
        self.headers = []


class State:
    def __init__(self, seed):
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.next_case = FIRST_CASE_ID      # never reused, across resets too
        self.conns = 0
        self.reading = set()                # connections with a request arriving, not yet logged
        self.t0 = time.time()
        self.reset(seed)

    def reset(self, seed=None):
        """Clears the log, the forced behaviours and the weights; reseeds only
        when given a seed (otherwise the draws go on where they were)."""
        with self.lock:
            if seed is not None or not hasattr(self, "rng"):
                self.reseed(seed)
            self.log = []
            self.reads = []
            self.cases = []
            self.read_chaos = 0.0
            self.read_force = []
            self.force = []
            self.answers = {k: float(w) for k, (_, w) in ANSWERS.items()}
            self.deliveries = {k: float(w) for k, w in DELIVERIES.items()}
            self.cond.notify_all()
        if seed is not None:
            print("chaos_server: seed %d" % seed, flush=True)

    def reseed(self, seed):
        """Both RNGs from seed (under the lock)."""
        self.seed = seed
        self.rng = random.Random(seed)
        self.read_rng = random.Random("reads %r" % (seed,))

    def new_conn(self):
        with self.lock:
            self.conns += 1
            return self.conns

    @staticmethod
    def _choose(rng, weights):
        names = sorted(n for n, w in weights.items() if w > 0)
        return rng.choices(names, [weights[n] for n in names])[0]

    def pick(self):
        """The next behaviour: a forced one first, else drawn. Every random
        parameter is drawn here, under the lock, from the seeded RNG."""
        with self.lock:
            rng = self.rng
            forced = None
            if self.force:
                forced = self.force[0]
                forced["count"] -= 1
                if forced["count"] <= 0:
                    self.force.pop(0)
            if forced:
                b = Behaviour(forced.get("answer") or self._choose(rng, self.answers),
                              forced.get("delivery") or self._choose(rng, self.deliveries))
                b.variant, b.cut = forced.get("variant"), forced.get("cut")
            else:
                b = Behaviour(self._choose(rng, self.answers), self._choose(rng, self.deliveries))
            if b.delivery == "garbage" and b.variant is None:
                b.variant = rng.choice(GARBAGE)
            if b.delivery in ("trunc_fin", "trunc_rst") and b.cut is None:
                b.cut = rng.random()          # a fraction of the answer's length
            if b.delivery == "idle_close":
                b.idle = rng.uniform(0, 0.05)
                if forced and forced.get("idle") is not None:
                    b.idle = forced["idle"]
            a = b.answer
            if a in ("retry0", "retry_bad", "retry_huge", "retry_none"):
                b.status = rng.choice((429, 503))
                if a == "retry0":
                    b.headers.append(("Retry-After", "0"))
                elif a == "retry_bad":
                    b.headers.append(("Retry-After", rng.choice(RETRY_BAD)))
                elif a == "retry_huge":
                    v = rng.choice(RETRY_HUGE)
                    if v is None:
                        v = time.strftime("%a, %d %b %Y %H:%M:%S GMT",
                                          time.gmtime(time.time() + 86400))
                    b.headers.append(("Retry-After", v))
            elif a == "redirect":
                b.status = rng.choice((301, 302, 303, 307, 308))
                b.headers.append(("Location", "/elsewhere"))
            return b, rng.getrandbits(64)

    def record(self, data=None, contact=None, **rec):
        """Logs a reception; with decision "created", assigns its case id and
        stores the case (data: the request body, contact: its contactId)."""
        with self.lock:
            now = time.time()
            rec["seq"] = len(self.log) + 1
            rec["t"] = round(now - self.t0, 6)
            rec.setdefault("done", True)
            rec.setdefault("retry_ok", False)
            rec["contact"] = contact
            if rec["decision"] == "created":
                rec["case_id"] = self.next_case
                self.next_case += 1
                case = new_case(rec["case_id"], contact, data or {}, now)
                self.cases.append(case)
                rec["case"] = case
            else:
                rec["case_id"] = None
            self.log.append(rec)
            return rec

    def read_pick(self):
        """The chaos for the next read: a forced one, else drawn with
        probability read_chaos (None: the read is answered as it should be),
        and a salt for its random parameters."""
        with self.lock:
            rng = self.read_rng
            if self.read_force:
                return self.read_force.pop(0), rng.getrandbits(64)
            if self.read_chaos > 0 and rng.random() < self.read_chaos:
                return rng.choice(sorted(READ_CHAOS)), rng.getrandbits(64)
            return None, 0

    def list_page(self, q):
        with self.lock:
            return list_cases(self.cases, q, None)

    def record_read(self, **r):
        with self.lock:
            r["seq"] = len(self.reads) + 1
            r["t"] = round(time.time() - self.t0, 6)
            self.reads.append(r)

    def finish(self, rec, delivered):
        with self.lock:
            rec["delivered"] = delivered
            readable = rec["delivery"] in READABLE or (
                rec["delivery"] == "garbage" and rec["variant"] in READABLE_GARBAGE)
            rec["retry_ok"] = bool(delivered and readable
                                   and rec["status"] in (429, 503)
                                   and rec.get("retry_after") == "0")
            rec["done"] = True
            self.cond.notify_all()

    def busy(self, conn, on):
        """A request is arriving on conn (its first bytes seen) until it is logged or
        the connection ends: the log waits for it."""
        with self.lock:
            if on:
                self.reading.add(conn)
            else:
                self.reading.discard(conn)
                self.cond.notify_all()

    def snapshot(self, wait=3.0):
        deadline = time.time() + wait
        with self.lock:
            while (self.reading or any(not r["done"] for r in self.log)) and time.time() < deadline:
                self.cond.wait(0.05)
            pending = sum(1 for r in self.log if not r["done"])
            return {"seed": self.seed, "pending": pending,
                    "receptions": [{k: v for k, v in r.items() if k != "case"} for r in self.log],
                    "reads": [dict(r) for r in self.reads]}



# ---------------------------------------------------------------------------
# The chaos listener: raw sockets, so every byte is ours to choose.

class Conn:
    def __init__(self, server, sock):
        self.server, self.sock = server, sock
        self.state = server.state
        self.id = self.state.new_conn()

    # ---- reading ----------------------------------------------------------
    def peek(self, n=65536):
        try:
            return self.sock.recv(n, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return None                       # nothing yet
        except OSError:
            return b""

    def read_head(self):
        """Consumes exactly the request head (up to the blank line), leaving the
        body in the kernel. None when the client closed or went silent."""
        last = -1
        while not self.server.stopping.is_set():
            try:
                r, _, _ = select.select([self.sock], [], [], 0.5)
            except (OSError, ValueError):
                return None
            if not r:
                continue
            data = self.peek()
            if data is None:
                continue
            if data == b"":
                return None
            self.state.busy(self.id, True)
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                return self.recv_exact(end + 4)
            if len(data) > 65000:
                return None
            if len(data) == last:             # readable, no new bytes: wait a little
                time.sleep(0.001)
            last = len(data)
        return None

    def recv_exact(self, n):
        out = []
        while n > 0:
            try:
                chunk = self.sock.recv(min(n, 65536))
            except OSError:
                return None
            if not chunk:
                return None
            out.append(chunk)
            n -= len(chunk)
        return b"".join(out)

    # ---- closing ----------------------------------------------------------
    def fin(self):
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.sock.close()

    def rst(self):
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.sock.close()

    def send(self, data):
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    # ---- the loop -----------------------------------------------------------
    def run(self):
        try:
            return self.loop()
        finally:
            self.state.busy(self.id, False)

    def loop(self):
        idle = None
        while not self.server.stopping.is_set():
            if idle is not None:
                # the server's idle timer fires whatever arrived meanwhile: a
                # request that reached the socket is dropped unread (RST)
                time.sleep(idle)
                data = self.peek()
                if data and data.startswith(b"GET "):
                    idle = None               # a read: no chaos unless asked, so served
                    continue
                if data:
                    m = TITLE_RE.search(data)
                    self.state.record(marker=m and json.loads(b'"' + m.group(1) + b'"'),
                                      conn=self.id, full=False, decision="not_created",
                                      answer=None, delivery="idle_close_unread", variant=None,
                                      status=None, body_json=False, delivered=False)
                return self.sock.close()
            head = self.read_head()
            if head is None:
                return self.sock.close()
            keep, idle = self.request(head)
            self.state.busy(self.id, False)
            if not keep:
                return None

    def request(self, head):
        lines = head.decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        target = rest.rsplit(" ", 1)[0]
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                try:
                    length = max(0, int(value.strip()))
                except ValueError:
                    length = 0
        path, _, query = target.partition("?")
        if method == "GET" and path == LIST_PATH:
            return self.read(lines, query, length), None
        b, salt = self.state.pick()
        if b.delivery in HEADERS_ONLY:
            return self.headers_only(b, length), None
        body = self.recv_exact(length) if length else b""
        if body is None:
            self.sock.close()
            return False, None
        try:
            data = parse_body(body)
        except Invalid:
            data = {}
        marker = data.get("title") if isinstance(data.get("title"), str) else None
        if method != "POST" or target.split("?", 1)[0] != API_PATH:
            b = Behaviour("s404", "keepalive")
        decision = ANSWERS[b.answer][0]
        contact = dict(parse_qsl(query)).get("contactId")
        contact = int(contact) if contact and CONTACT_RE.fullmatch(contact) else None
        rec = self.state.record(data=data, contact=contact,
                                marker=marker, conn=self.id, full=True, decision=decision,
                                answer=b.answer, delivery=b.delivery, variant=b.variant,
                                status=None, body_json=False, delivered=False, done=False)
        try:
            status, headers, out, is_json = self.answer(b, data, rec.get("case"))
            rec["status"] = status
            rec["body_json"] = is_json
            rec["retry_after"] = dict(headers).get("Retry-After")
            keep, delivered = self.deliver(b, status, headers, out, random.Random(salt))
        except Exception:
            self.state.finish(rec, False)
            raise
        self.state.finish(rec, delivered)
        return keep, (b.idle if keep and b.delivery == "idle_close" else None)

    def headers_only(self, b, length):
        """The head read, the body left unread: nothing processed. The marker
        from what has arrived (peeked, so it stays unread)."""
        data = b""
        deadline = time.time() + 0.05
        while time.time() < deadline:
            data = self.peek() or b""
            if len(data) >= length:
                break
            time.sleep(0.002)
        m = TITLE_RE.search(data)
        rec = self.state.record(marker=m and json.loads(b'"' + m.group(1) + b'"'),
                                conn=self.id, full=False, decision="not_created",
                                answer=None, delivery=b.delivery, variant=None, status=None,
                                body_json=False, delivered=False)
        if b.delivery == "headers_only_rst":
            self.rst()
        else:
            self.fin()
        rec["delivered"] = True
        return False

    # ---- a read: the case list ---------------------------------------------
    def read(self, lines, query, length):
        """GET of the case list: answered from the stored cases, with no chaos
        unless read_chaos or read_force says. Logged in reads, not as a
        reception. Whether the connection is kept."""
        if length and self.recv_exact(length) is None:
            self.sock.close()
            return False
        auth = ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "authorization":
                auth = value.strip()
        chaos, salt = self.state.read_pick()
        rows = count = None
        try:
            q = parse_case_query(parse_qsl(query, keep_blank_values=True))
            if not auth.startswith("Bearer ") or not auth[7:].strip():
                status, body = 401, jdump({"type": "ERROR_UNAUTHORIZED",
                                           "message": "Invalid API key"})
            else:
                page = self.state.list_page(q)
                status, body = 200, jdump({"data": page})
                rows, count = len(page["data"]), page["count"]
        except Invalid as e:
            status, body = 400, jdump({"type": "ERROR_INVALID_INPUT", "message": str(e)})
        headers = [("Content-Type", JSON_OK if status == 200 else JSON_ERR)]
        rng = random.Random(salt)
        if chaos:
            answer, delivery = READ_CHAOS[chaos]
            b = Behaviour(answer, delivery)
            if delivery == "garbage":
                b.variant = "hello"
            if delivery == "trunc_rst":
                b.cut = rng.uniform(0.05, 0.95)
            if answer is not None:
                status, headers, body, _ = self.answer(b, {}, None)
        else:
            b = Behaviour(None, "keepalive")
        self.state.record_read(conn=self.id, query=dict(parse_qsl(query)), status=status,
                               chaos=chaos, count=count, rows=rows)
        keep, _ = self.deliver(b, status, headers, body, rng)
        return keep

    # ---- the answer -------------------------------------------------------
    def answer(self, b, data, case):
        """(status, headers, body, body is a JSON object) for the decision
        (case: the one stored, when created: its id, threadId, dateCreated)."""
        a = b.answer
        fx = self.server.fixtures
        if a in ("ok", "created_201"):
            doc = fx.render(data, case)
            return (200 if a == "ok" else 201), [("Content-Type", JSON_OK)], doc, True
        if a == "s500":
            return 500, [("Content-Type", JSON_ERR)], jdump(
                {"type": "ERROR_SERVER_ERROR", "message": "Internal server error"}), True
        if a == "s502":
            return 502, [("Content-Type", "text/html")], HTML_502, False
        if a == "s504":
            return 504, [("Content-Type", JSON_ERR)], jdump({"message": "Gateway timeout"}), True
        if a == "ok_nonjson":
            return 200, [("Content-Type", JSON_OK)], b"<html>not json", False
        if a == "ok_empty":
            return 200, [("Content-Type", JSON_OK)], b"", False
        if a == "no_content":
            return 204, [], b"", False
        if a == "s400":
            return 400, [("Content-Type", JSON_ERR)], jdump(
                {"type": "ERROR_INVALID_INPUT", "message": "Invalid input"}), True
        if a == "s401":
            return 401, [("Content-Type", JSON_ERR)], jdump(
                {"type": "ERROR_UNAUTHORIZED", "message": "Invalid API key"}), True
        if a == "s404":
            return 404, [("Content-Type", JSON_ERR)], jdump({"message": "Contact not found"}), True
        if a == "s422":
            return 422, [("Content-Type", JSON_ERR)], jdump({"message": "Unprocessable"}), True
        if a == "s407":
            return 407, [("Content-Type", JSON_ERR), ("Proxy-Authenticate", 'Basic realm="acquire"')], \
                jdump({"message": "Proxy authentication required (from Acquire)"}), True
        if a == "redirect":
            page = b"<html><body><a href=\"/elsewhere\">moved</a></body></html>\n"
            return b.status, [("Content-Type", "text/html")] + b.headers, page, False
        if a.startswith("retry"):
            return b.status, [("Content-Type", JSON_ERR)] + b.headers, jdump(
                {"type": "ERROR_RATE_LIMIT", "message": "Slow down"}), True
        raise AssertionError("unknown answer %r" % a)

    def deliver(self, b, status, headers, body, rng):
        """Writes the answer as b.delivery says. (keep the connection, every
        byte meant to go out went out)."""
        d = b.delivery
        if status == 204:
            body = b""
        line = b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, "Status").encode())
        hs = [("Server", "AcquireChaos/1.0")] + list(headers)

        def head(extra, first=line):
            return first + b"".join(b"%s: %s\r\n" % (k.encode(), v.encode("latin-1"))
                                    for k, v in hs + extra) + b"\r\n"

        cl = [("Content-Length", str(len(body)))]
        whole = head(cl) + body
        if d in ("keepalive", "idle_close"):
            return True, self.send(whole)
        if d == "close":
            ok = self.send(head(cl + [("Connection", "close")]) + body)
            self.fin()
            return False, ok
        if d == "eof_body":
            ok = self.send(head([]) + body)
            self.fin()
            return False, ok
        if d == "chunked":
            if status == 204:
                return True, self.send(head([]))
            parts, i = [], 0
            while i < len(body):
                n = rng.randint(1, max(1, min(len(body) - i, 4096)))
                parts.append(b"%x\r\n%s\r\n" % (n, body[i:i + n]))
                i += n
            return True, self.send(head([("Transfer-Encoding", "chunked")])
                                   + b"".join(parts) + b"0\r\n\r\n")
        if d == "continue100":
            return True, self.send(b"HTTP/1.1 100 Continue\r\n\r\n" + whole)
        if d == "trickle":
            h = head(cl)
            for i in range(len(h)):
                if not self.send(h[i:i + 1]):
                    return False, False
                time.sleep(0.0005)
            step = max(1, len(body) // 20)
            for i in range(0, len(body), step):
                time.sleep(0.005)
                if not self.send(body[i:i + step]):
                    return False, False
            return True, True
        if d in ("trunc_fin", "trunc_rst"):
            if b.cut == "headers":            # the whole head, no body
                at = len(head(cl))
            elif b.cut == "head_open":        # the status line and the answer's own
                at = len(head([])) - 2        # headers: no framing, no blank line
            else:
                at = max(1, min(len(whole) - 1, int(float(b.cut) * len(whole))))
            ok = self.send(whole[:at])
            self.rst() if d == "trunc_rst" else self.fin()
            return False, ok
        if d == "rst_now":
            self.rst()
            return False, True
        if d == "fin_now":
            self.fin()
            return False, True
        if d == "hang":
            self.hang()
            return False, False
        if d == "garbage":
            v = b.variant
            reason = REASONS.get(status, "Status").encode()
            if v == "hello":
                out = head(cl, b"hello there\r\n") + body
            elif v == "http12":
                out = head(cl, b"HTTP/1.2 %d %s\r\n" % (status, reason)) + body
            elif v == "abc":
                out = head(cl, b"HTTP/1.1 abc\r\n") + body
            elif v == "foo":
                out = head(cl, b"FOO/1.0 %d %s\r\n" % (status, reason)) + body
            elif v == "http2":
                out = head(cl, b"HTTP/2 %d\r\n" % status) + body
            elif v == "empty":
                out = b"\r\n" + whole
            elif v == "binary":
                out = bytes(rng.getrandbits(8) for _ in range(32))
            elif v == "bare_json":
                out = body or b"{}"
            else:
                raise AssertionError("unknown garbage variant %r" % v)
            ok = self.send(out)
            self.fin()
            return False, ok
        if d == "cl_long":
            ok = self.send(head([("Content-Length", str(len(body) + rng.randint(1, 100)))]) + body)
            self.fin()
            return False, ok
        if d == "bad_chunk":
            ok = self.send(head([("Transfer-Encoding", "chunked")]) + b"zz\r\n" + body + b"\r\n0\r\n\r\n")
            self.fin()
            return False, ok
        if d == "cl_te":
            chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
            ok = self.send(head([("Content-Length", str(len(body) // 2 + 1)),
                                 ("Transfer-Encoding", "chunked")]) + chunked)
            self.fin()
            return False, ok
        if d == "cl_dup":
            two = [("Content-Length", str(len(body))), ("Content-Length", str(len(body) + 7))]
            rng.shuffle(two)
            ok = self.send(head(two) + body)
            self.fin()
            return False, ok
        if d == "cl_neg":
            ok = self.send(head([("Content-Length", "-%d" % max(1, len(body)))]) + body)
            self.fin()
            return False, ok
        raise AssertionError("unknown delivery %r" % d)

    def hang(self):
        """No answer: hold the connection until the client closes it (its
        timeout), the server stops, or 60 s."""
        deadline = time.time() + 60
        while not self.server.stopping.is_set() and time.time() < deadline:
            try:
                r, _, _ = select.select([self.sock], [], [], 0.2)
                if r and not self.sock.recv(65536):
                    break
            except (OSError, ValueError):
                break
        self.sock.close()


class ChaosHandler(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        Conn(self.server, self.request).run()

    def finish(self):
        pass


class ChaosServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def shutdown_request(self, request):
        try:
            request.close()                   # Conn closed it already, its own way
        except OSError:
            pass

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class TLSRelayHandler(socketserver.BaseRequestHandler):
    """--tls: the handshake, then the bytes both ways to the chaos listener
    (chaos_proxy.pipe: FIN for FIN, reset for reset)."""

    def handle(self):
        raw = self.request
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            raw.settimeout(5)
            tls = self.server.ctx.wrap_socket(raw, server_side=True)
        except (OSError, ValueError) as e:
            if self.server.verbose:
                sys.stderr.write("chaos_server: TLS handshake failed: %s\n" % e)
            return relay_rst(raw)
        try:
            inner = socket.create_connection(self.server.inner, timeout=5)
            inner.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            return relay_rst(tls)
        relay_pipe(tls, inner, self.server.stopping)

    def finish(self):
        pass


class TLSRelay(ChaosServer):
    pass


# ---------------------------------------------------------------------------
# The control listener (plain HTTP, no chaos).

def check_weights(given, known, what):
    if not isinstance(given, dict):
        raise Invalid("%s must be an object of weights" % what)
    for k, w in given.items():
        if k not in known:
            raise Invalid("unknown %s %r (one of %s)" % (what, k, ", ".join(sorted(known))))
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
            raise Invalid("%s weight for %r must be a number >= 0" % (what, k))
    return {k: float(w) for k, w in given.items()}


def check_force(force):
    if not isinstance(force, list):
        raise Invalid("force must be a list")
    out = []
    for f in force:
        if not isinstance(f, dict):
            raise Invalid("a forced behaviour is an object")
        a, d = f.get("answer"), f.get("delivery")
        if a is not None and a not in ANSWERS:
            raise Invalid("unknown answer %r" % a)
        if d is not None and d not in DELIVERIES:
            raise Invalid("unknown delivery %r" % d)
        v = f.get("variant")
        if v is not None and v not in GARBAGE:
            raise Invalid("unknown garbage variant %r" % v)
        cut = f.get("cut")
        if cut is not None and cut not in ("headers", "head_open") and not (
                isinstance(cut, (int, float)) and not isinstance(cut, bool) and 0 <= cut <= 1):
            raise Invalid("cut is \"headers\", \"head_open\" or a fraction 0..1")
        count = f.get("count", 1)
        if isinstance(count, float) and count.is_integer():
            count = int(count)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise Invalid("count must be a positive integer")
        idle = f.get("idle")
        if idle is not None and (isinstance(idle, bool) or not isinstance(idle, (int, float))
                                 or not 0 <= idle <= 5):
            raise Invalid("idle is seconds, 0..5")
        out.append({"answer": a, "delivery": d, "variant": v, "cut": cut, "count": count,
                    "idle": idle})
    return out


def check_reads(body):
    """(read_chaos or None, read_force list) from a config body."""
    p = body.get("read_chaos")
    if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float))
                          or not 0 <= p <= 1):
        raise Invalid("read_chaos is a probability 0..1")
    force = body.get("read_force", [])
    if force == {}:           # an empty Lua table, as lua-cjson writes it
        force = []
    if not isinstance(force, list) or any(f not in READ_CHAOS for f in force):
        raise Invalid("read_force is a list of %s" % ", ".join(sorted(READ_CHAOS)))
    return (None if p is None else float(p)), list(force)


def check_seed(seed):
    if isinstance(seed, float) and seed.is_integer():
        seed = int(seed)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise Invalid("seed must be an integer")
    return seed


class ControlHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("chaos_server control: %s\n" % (fmt % args))

    def reply(self, status, obj):
        body = jdump(obj)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_GET(self):
        st = self.server.state
        if self.path == "/_control/log":
            return self.reply(200, st.snapshot())
        if self.path == "/_control/behaviours":
            return self.reply(200, {"answers": {k: v[0] for k, v in ANSWERS.items()},
                                    "deliveries": sorted(DELIVERIES), "garbage": GARBAGE,
                                    "read_chaos": sorted(READ_CHAOS)})
        return self.reply(404, {"message": "no such control call"})

    def do_POST(self):
        st = self.server.state
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            body = json.loads(raw.decode("utf-8")) if raw.strip() else {}
            if not isinstance(body, dict):
                raise Invalid("a JSON object is expected")
            if self.path == "/_control/reset":
                st.reset(check_seed(body["seed"]) if "seed" in body else None)
                return self.reply(200, {"seed": st.seed})
            if self.path == "/_control/config":
                seed = check_seed(body["seed"]) if "seed" in body else None
                answers = check_weights(body.get("answers", {}), ANSWERS, "answer")
                deliveries = check_weights(body.get("deliveries", {}), DELIVERIES, "delivery")
                force = check_force(body.get("force", []))
                read_chaos, read_force = check_reads(body)
                with st.lock:
                    if seed is not None:      # reseeds only; the log stays
                        st.reseed(seed)
                        print("chaos_server: seed %d" % seed, flush=True)
                    if read_chaos is not None:
                        st.read_chaos = read_chaos
                    st.read_force.extend(read_force)
                    st.answers.update(answers)
                    st.deliveries.update(deliveries)
                    if not any(w > 0 for w in st.answers.values()) or \
                       not any(w > 0 for w in st.deliveries.values()):
                        raise Invalid("every weight is 0")
                    st.force.extend(force)
                    return self.reply(200, {"seed": st.seed, "force": len(st.force)})
            if self.path == "/_control/shutdown":
                self.reply(200, {"stopping": True})
                threading.Thread(target=self.server.stop_all, daemon=True).start()
                return None
        except (Invalid, ValueError, KeyError) as e:
            return self.reply(400, {"message": str(e)})
        return self.reply(404, {"message": "no such control call"})


def main():
    close_inherited_fds()
    here = os.path.dirname(os.path.abspath(__file__))
    p = spec_server_arguments("The chaos server.")
    p.add_argument("--seed", type=int)
    p.add_argument("--fixtures", default=os.path.normpath(os.path.join(here, "..", "fixtures", "api")))
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args()
    if bool(a.tls_cert) != bool(a.tls_key):
        p.error("--tls-cert and --tls-key go together")
    seed = a.seed if a.seed is not None else int(time.time())
    fixtures = checked_fixtures(a.fixtures, "chaos_server")

    stopping = threading.Event()
    state = State(seed)
    chaos = ChaosServer((a.host, 0 if a.tls_cert else a.port), ChaosHandler)
    chaos.state, chaos.fixtures, chaos.stopping = state, fixtures, stopping
    ctl = PlainServer((a.host, 0), ControlHandler)
    ctl.state, ctl.verbose, ctl.stopping = state, a.verbose, stopping
    tls = None
    if a.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        tls = TLSRelay((a.host, a.port), TLSRelayHandler)
        tls.ctx, tls.stopping, tls.verbose = ctx, stopping, a.verbose
        tls.inner = (a.host, chaos.server_address[1])
        threading.Thread(target=tls.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def stop_all():
        stopping.set()
        chaos.shutdown()
        ctl.shutdown()
        if tls:
            tls.shutdown()
    ctl.stop_all = stop_all

    port, control_port = (tls or chaos).server_address[1], ctl.server_address[1]
    if a.port_file:
        write_port_file(a.port_file, "%d %d %d" % (port, os.getpid(), control_port))
    print("chaos_server: listening on %s://%s:%d, control on http://%s:%d"
          % ("https" if tls else "http", a.host, port, a.host, control_port), flush=True)
    follow_parent(a.parent_pid)
    threading.Thread(target=ctl.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    try:
        chaos.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        stopping.set()
        chaos.server_close()
        ctl.server_close()
        sys.stdout.flush()
        os._exit(0)       # no waiting on connection threads (a hang)


if __name__ == "__main__":
    main()
