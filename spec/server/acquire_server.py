#!/usr/bin/env python3
"""The local Acquire server: a stand-in for Acquire's case API on loopback.

Faithful to spec/fixtures/api/ (a copy of the API's documentation):
POST /api/v1/crm/messenger/chat/create?contactId=N with a Bearer key.
Records every request (raw bytes) and connection, and misbehaves on request
through POST /_control/fault. Standard library only (Debian's python3).

    acquire_server.py [--host 127.0.0.1] [--port 0] [--port-file F]
                      [--parent-pid P] [--key test-key]
                      [--readonly-key readonly-key] [--create-only-key create-only-key]
                      [--fixtures DIR]
                      [--tls-cert C --tls-key K] [--verbose] [--self-check]

The port file gets "PORT PID\\n" (with TLS: "PORT PID CONTROL_PORT\\n", the
control port being a plain-HTTP listener on the same state, for clients
that cannot speak TLS), written atomically once the socket is bound.

Control endpoints (no auth, never recorded):
    GET  /_control/requests   {"requests": [...]}
    GET  /_control/stats      {"connections", "requests", "max_in_flight", "in_flight", "cases"}
    GET  /_control/faults     {"faults": [...]}  (the rules, with the times left)
    POST /_control/reset      clears records, counters, faults, cases and their settings
    POST /_control/fault      appends a rule: {"action", "contactId"?, "times"?, "delay"?, ...}
                              (the first rule that matches and has times left answers;
                              "during": s, only for s seconds from its first match;
                              "raw" writes {"body"} or {"chunks"} "interval" s apart, then
                              closes the connection unless "close": false;
                              "hangup" gives the normal answer, kept alive by its headers,
                              then closes the connection "seconds" later, as a server whose
                              keep-alive ran out: the client finds it closed while idle)
    POST /_control/shutdown   answers, then stops the server
    GET  /_control/config     {"unique_ids"}; POST sets it: {"unique_ids": true} makes a
                              create's 200 carry the stored case's id, threadId and dateCreated
    GET  /_control/cases      {"cases": [every stored case], "hidden", "visible", "lag_ms"}
    POST /_control/cases      {"lag_ms": N}: a case is read back only N ms after its creation;
                              {"hide": [ids]} / {"unhide": [ids]}: pages cases out of every read

Cases: every create the server processes (a valid request it answers 200, no fault) stores a
case (ids from 100001 up, again after a reset; dateCreated from the server's clock). A fault
rule stores the case first, then misbehaves, only with "create": true (default false for every
action but "delay" and "hangup", whose answer is the normal one); "endpoint": "create" or "read" limits a
rule to the create call or to the two reads (rules without it match every API request; rules
with a contactId never match a read, which has no contactId parameter). The reads (any of
the three keys but the create-only one; 401 otherwise):
    GET /api/v1/crm/objects/case      {"data": {"page", "offset", "limit", "count", "data": [...]}}
        where=column|eq|value (repeated, as where=, where[]= or where[N]=, AND-ed; the value is
        the rest after the second |; columns contactId, id, title, status, channel; anything
        else is 400 ERROR_INVALID_INPUT), select=a|b (default: every column), relations=contact
        (others ignored), limit (default 20, at most 100), offset, page (0-based; offset wins
        over page). Ascending ids; count is every visible match. Unknown parameters: 400.
    GET /api/v1/crm/objects/case/{id} {"data": case}, select, relations; 404 ERROR_NOT_FOUND
"""
import argparse
import base64
import gzip
import json
import os
import re
import select
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, parse_qsl, urlsplit

API_PATH = "/api/v1/crm/messenger/chat/create"
CONTACT = 597752
CONTACT_RE = re.compile(r"[1-9][0-9]*")

JSON_OK = "application/json; charset=utf-8"   # the success answer
JSON_ERR = "application/json"                 # error bodies

# ---------------------------------------------------------------------------
# The documented answers, by textual substitution so formatting stays
# byte-identical to create-case-response.json.

TITLE = '"title": "string"'
DESCRIPTION = '"description": "I\'m reopening the closed case"'

# reopen-case.md: same document, these four values changed. Whole lines, with
# their indentation, so each names the right level (data. vs data.contact.).
REOPEN = [
    ('\n        "id": 2071,\n', '\n        "id": 1694,\n'),
    ('\n        "dateCreated": "2021-03-30T18:21:41.000Z",\n',
     '\n        "dateCreated": "2021-03-24T11:08:17.000Z",\n'),
    ('\n        "dateQueue": "2021-03-30T18:21:41.338Z",\n',
     '\n        "dateQueue": "2021-03-24T11:08:17.400Z",\n'),
    ('\n            "dateUpdated": "2021-03-30T18:21:41.353Z",\n',
     '\n            "dateUpdated": "2021-03-24T11:08:17.498Z",\n'),
]


class FixtureError(Exception):
    pass


def replace_once(text, old, new, what):
    n = text.count(old)
    if n != 1:
        raise FixtureError("%s: expected exactly one %r, found %d" % (what, old.strip(), n))
    return text.replace(old, new, 1)


def dumps_value(v):
    """A JSON value as text, non-ASCII kept as is (as the echo would be)."""
    s = json.dumps(v, ensure_ascii=False)
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:      # a lone surrogate from a \ud800 escape
        s = json.dumps(v)
    return s


class Fixtures:
    def __init__(self, directory):
        self.dir = directory
        with open(os.path.join(directory, "create-case-response.json"), "rb") as f:
            self.response_bytes = f.read()
        with open(os.path.join(directory, "create-case-request.json"), "rb") as f:
            self.request_bytes = f.read()
        what = "create-case-response.json"
        self.doc = self.response_bytes.decode("utf-8")
        replace_once(self.doc, TITLE, TITLE, what)
        replace_once(self.doc, DESCRIPTION, DESCRIPTION, what)
        reopen = self.doc
        for old, new in REOPEN:
            reopen = replace_once(reopen, old, new, what + " (reopen)")
        self.reopen = reopen
        for doc in (self.doc, self.reopen):
            for key in CASE_LINES:
                if len(case_line(key).findall(doc)) != 1:
                    raise FixtureError("%s: expected exactly one data.%s" % (what, key))
        try:
            self.contact = json.loads(self.doc)["data"]["contact"]
        except (ValueError, KeyError, TypeError):
            raise FixtureError("%s: no data.contact object" % what)
        if not isinstance(self.contact, dict) or self.contact.get("id") != CONTACT:
            raise FixtureError("%s: data.contact.id is not %d" % (what, CONTACT))

    def render(self, data, case=None):
        """The 200 body for a valid request body (a dict); with a stored case, its
        id, threadId and dateCreated instead of the documented ones (unique_ids)."""
        doc = self.reopen if is_reopen(data) else self.doc
        title = data.get("title")
        message = data.get("message")
        text = message.get("message") if isinstance(message, dict) else None
        doc = doc.replace(TITLE, '"title": ' + dumps_value(title), 1)
        doc = doc.replace(DESCRIPTION, '"description": ' + dumps_value(text), 1)
        if case is not None:
            for key in CASE_LINES:
                doc = case_line(key).sub(
                    lambda m, k=key: '\n        "%s": %s%s\n' % (k, dumps_value(case[k]), m.group(1)),
                    doc, count=1)
        return doc.encode("utf-8")


# the data-level lines (8 spaces in) that unique_ids rewrites
CASE_LINES = ("id", "threadId", "dateCreated")


def case_line(key):
    return re.compile(r'\n        "%s": [^\n]*?(,?)\n' % re.escape(key))


def is_reopen(data):
    return "threadId" in data and "sessionId" in data


# ---------------------------------------------------------------------------
# The request body: the documented types; unknown top-level keys are ignored.

class Invalid(Exception):
    pass


class Float(float):
    """A JSON number written with a fraction or an exponent."""


def _no_constant(name):
    raise ValueError("%s is not JSON" % name)


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def parse_body(raw):
    if not raw.strip(b" \t\r\n"):
        return {}
    try:
        data = json.loads(raw.decode("utf-8"), parse_float=Float, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Invalid("Body is not valid JSON")
    if not isinstance(data, dict):
        raise Invalid("Body is not valid JSON")
    return data


def validate(body):
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


# ---------------------------------------------------------------------------
# Faults

ACTIONS = ("delay", "status", "html", "invalid_json", "reset", "truncate", "hang",
           "trickle", "chunked", "gzip", "redirect", "big", "close", "raw", "hangup")

HTML_502 = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
            b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
            b"</body>\r\n</html>\r\n")


def _number(rule, key, integer=False, minimum=0):
    v = rule.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise Invalid("%s must be a number" % key)
    if integer:
        if isinstance(v, float):
            if not v.is_integer():
                raise Invalid("%s must be an integer" % key)
            v = int(v)
    if v < minimum:
        raise Invalid("%s must be >= %s" % (key, minimum))
    return v


def check_rule(rule):
    """A fault rule as posted, checked and normalised; raises Invalid."""
    if not isinstance(rule, dict):
        raise Invalid("a fault rule is a JSON object")
    action = rule.get("action")
    if action not in ACTIONS:
        raise Invalid("unknown action %r (one of %s)" % (action, ", ".join(ACTIONS)))
    out = dict(rule)
    contact = rule.get("contactId")
    if contact is not None:
        if isinstance(contact, float) and contact.is_integer():
            contact = int(contact)
        if isinstance(contact, bool) or not isinstance(contact, (int, str)):
            raise Invalid("contactId must be an integer or a string")
        out["contactId"] = str(contact)
    out["times"] = _number(rule, "times", integer=True)
    for k in ("delay", "seconds", "interval", "during"):
        out[k] = _number(rule, k)
    out["size"] = _number(rule, "size", integer=True)
    status = _number(rule, "status", integer=True, minimum=100)
    if status is not None and status > 999:
        raise Invalid("status must be 100..999")
    out["status"] = status
    headers = rule.get("headers")
    if headers is not None:
        if not isinstance(headers, dict):
            raise Invalid("headers must be an object")
        if any(isinstance(v, (dict, list)) for v in headers.values()):
            raise Invalid("header values must be strings or numbers")
        out["headers"] = {str(k): (v if isinstance(v, str) else json.dumps(v))
                          for k, v in headers.items()}
    chunks = rule.get("chunks")
    if chunks is not None and (not isinstance(chunks, list) or
                               not all(isinstance(c, str) for c in chunks)):
        raise Invalid("chunks must be a list of strings")
    for k in ("close", "create"):
        if not isinstance(rule.get(k, True), bool):
            raise Invalid("%s must be true or false" % k)
    if rule.get("endpoint") not in (None, "create", "read"):
        raise Invalid("endpoint must be \"create\" or \"read\"")
    for k in ("body", "content_type", "location"):
        if rule.get(k) is not None and not isinstance(rule[k], str):
            raise Invalid("%s must be a string" % k)
    return {k: v for k, v in out.items() if v is not None}


# ---------------------------------------------------------------------------
# Cases (case-list.md): what the server stores for every create it processes,
# and the two reads. Pure functions of the query, so the self-check runs them.

CASE_PATH_RE = re.compile(r"/api/v1/crm/objects/case(?:/([^/]*))?")
FIRST_CASE_ID = 100001
# every column a case has, in the order it is written: the documented select
# columns of the list and of the single read, and threadId (in every documented case)
CASE_COLUMNS = ("id", "contactId", "title", "description", "status", "channel",
                "dateCreated", "dateUpdated", "dateQueue", "datePending", "dateActive",
                "dateClosed", "closedBy", "closingState", "visitId", "queueId", "queueOrder",
                "userId", "waitTime", "meta", "parentId", "threadId")
WHERE_COLUMNS = {"contactId": int, "id": int, "title": str, "status": str, "channel": str}
LIST_LIMIT, MAX_LIMIT = 20, 100
DIGITS_RE = re.compile(r"[0-9]+")
WHERE_KEY_RE = re.compile(r"where(?:\[[0-9]*\])?")


def iso_ms(t):
    """2020-08-11T07:25:59.000Z: UTC, milliseconds, as every documented date."""
    ms = int(t * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + ".%03dZ" % (ms % 1000)


def new_case(case_id, contact, data, now):
    """The case a valid create body (a dict) makes, created at time.time() now."""
    message = data.get("message")
    text = message.get("message") if isinstance(message, dict) else None
    thread = data["threadId"] if is_reopen(data) else None
    stamp = iso_ms(now)
    case = dict.fromkeys(CASE_COLUMNS)
    case.update(id=case_id, contactId=contact, title=data.get("title"), description=text,
                status="active", channel=data["channel"] if "channel" in data else "chat",
                dateCreated=stamp, dateQueue=stamp, parentId=thread,
                threadId=case_id if thread is None else thread)
    return case


def _one(params, key):
    values = params.get(key, [])
    if len(values) > 1:
        raise Invalid("%s is given %d times" % (key, len(values)))
    return values[0] if values else None


def _count(params, key, minimum):
    v = _one(params, key)
    if v is None:
        return None
    if not DIGITS_RE.fullmatch(v) or int(v) < minimum:
        raise Invalid("%s must be an integer >= %d" % (key, minimum))
    return int(v)


def parse_case_query(pairs, single=False):
    """The query of a case read, as (name, value) pairs (URL-decoded), checked:
    {"where": [(column, value)], "select": [columns] | None, "contact": bool,
    "page", "offset", "limit"}. Raises Invalid for what this server would not
    read as the caller meant: an unknown parameter, column or expression."""
    params, where = {}, []
    for k, v in pairs:
        if WHERE_KEY_RE.fullmatch(k) and not single:
            where.append(v)
        elif k in (("select", "relations") if single else
                   ("select", "relations", "page", "offset", "limit")):
            params.setdefault(k, []).append(v)
        else:
            raise Invalid("unknown query parameter %r" % k)
    q = {"where": [], "select": None, "contact": False}
    for cond in where:
        parts = cond.split("|", 2)
        if len(parts) != 3:
            raise Invalid("where %r is not column|expression|value" % cond)
        column, expr, value = parts
        if column not in WHERE_COLUMNS:
            raise Invalid("where: unknown column %r (one of %s)"
                          % (column, ", ".join(sorted(WHERE_COLUMNS))))
        if expr != "eq":
            raise Invalid("where: unknown expression %r (only eq)" % expr)
        if WHERE_COLUMNS[column] is int:
            if not DIGITS_RE.fullmatch(value):
                raise Invalid("where: %s must be an integer" % column)
            value = int(value)
        q["where"].append((column, value))
    select = _one(params, "select")
    if select:
        columns = select.split("|")
        for c in columns:
            if c not in CASE_COLUMNS:
                raise Invalid("select: unknown column %r" % c)
        q["select"] = [c for c in CASE_COLUMNS if c in columns]
    relations = _one(params, "relations")
    q["contact"] = "contact" in (relations or "").split("|")
    if not single:
        limit = _count(params, "limit", 1)
        limit = LIST_LIMIT if limit is None else min(limit, MAX_LIMIT)
        offset, page = _count(params, "offset", 0), _count(params, "page", 0)
        if offset is None:
            page = page or 0
            offset = page * limit
        else:
            page = offset // limit
        q.update(limit=limit, offset=offset, page=page)
    return q


def case_view(case, q, contact):
    """A stored case as a read answers it: the selected columns, the contact."""
    out = {c: case[c] for c in (q["select"] or CASE_COLUMNS)}
    if q["contact"]:
        out["contact"] = contact
    return out


def list_cases(cases, q, contact):
    """The list answer's "data" for the visible cases (ascending ids)."""
    found = [c for c in cases if all(c[col] == v for col, v in q["where"])]
    found.sort(key=lambda c: c["id"])
    rows = found[q["offset"]:q["offset"] + q["limit"]]
    return {"page": q["page"], "offset": q["offset"], "limit": q["limit"], "count": len(found),
            "data": [case_view(c, q, contact) for c in rows]}


def check_ids(v, key):
    if v == {}:             # an empty Lua table, as lua-cjson writes it
        return []
    if not isinstance(v, list) or not all(is_int(i) for i in v):
        raise Invalid("%s must be a list of case ids" % key)
    return v


# ---------------------------------------------------------------------------

class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.epoch = 0
        self._clear()

    def _clear(self):
        self.requests = []
        self.faults = []
        self.connections = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.epoch += 1          # connections are counted again after a reset
        self.cases = []          # [(time.monotonic() at creation, case)], ascending ids
        self.next_case_id = FIRST_CASE_ID
        self.unique_ids = False
        self.lag_ms = 0
        self.hidden = set()

    def store_case(self, contact, data):
        """A new case for a valid create body: -> (case, unique_ids)."""
        with self.lock:
            case = new_case(self.next_case_id, contact, data, time.time())
            self.next_case_id += 1
            self.cases.append((time.monotonic(), case))
            return case, self.unique_ids

    def visible_cases(self):
        """The cases a read sees now: not hidden, older than lag_ms."""
        with self.lock:
            now, lag = time.monotonic(), self.lag_ms / 1000.0
            return [c for t, c in self.cases if c["id"] not in self.hidden and now - t >= lag]

    def cases_report(self):
        with self.lock:
            now, lag = time.monotonic(), self.lag_ms / 1000.0
            return {"cases": [dict(c) for _, c in self.cases], "lag_ms": self.lag_ms,
                    "hidden": sorted(self.hidden),
                    "visible": [c["id"] for t, c in self.cases
                                if c["id"] not in self.hidden and now - t >= lag]}

    def reset(self):
        # requests still being answered (a hang, a delay) belong to the old
        # epoch: they no longer count in in_flight, and do not decrement it
        with self.lock:
            self._clear()

    def take_fault(self, contact, endpoint):
        with self.lock:
            for rule in self.faults:
                want = rule.get("contactId")
                if want is not None and want != contact:
                    continue
                want = rule.get("endpoint")
                if want is not None and want != endpoint:
                    continue
                during = rule.get("during")
                if during is not None:      # a window that opens at the first match
                    first = rule.setdefault("first_match", time.monotonic())
                    if time.monotonic() - first >= during:
                        continue
                times = rule.get("times")
                if times is not None:
                    if times <= 0:
                        continue
                    rule["times"] = times - 1
                return dict(rule)
        return None


class BadRequest(Exception):
    pass


def err(status, type_, message, headers=None):
    """An error answer: (status, body, content type, headers)."""
    obj = {"type": type_, "message": message} if type_ else {"message": message}
    out = json.dumps(obj, separators=(",", ":")).encode("utf-8")
    return status, out, JSON_ERR, headers


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "AcquireLocal/1.0"

    def version_string(self):
        return self.server_version

    def setup(self):
        super().setup()
        # An answer is two writes (head, body): with Nagle's algorithm the
        # body waits for the head's ACK, which the client delays (40 ms an
        # answer). Pieces written apart on purpose (trickle, cut) still are.
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.conn_id = None
        self.conn_epoch = None

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("acquire_server: %s %s\n" % (self.address_string(), fmt % args))
            sys.stderr.flush()

    # ---- plumbing -------------------------------------------------------
    def read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            parts = []
            while True:
                line = self.rfile.readline(65537)
                if not line.endswith(b"\n"):
                    raise BadRequest("bad chunk")
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise BadRequest("bad chunk size")
                if size == 0:
                    while True:            # trailers, up to the empty line
                        line = self.rfile.readline(65537)
                        if line in (b"\r\n", b"\n", b""):
                            break
                    return b"".join(parts)
                data = self.rfile.read(size)
                if len(data) != size:
                    raise BadRequest("short chunk")
                parts.append(data)
                self.rfile.readline(3)
        n = self.headers.get("Content-Length")
        if n is None:
            return b""
        try:
            n = int(n.strip())
            if n < 0:
                raise ValueError
        except ValueError:
            raise BadRequest("bad Content-Length")
        data = self.rfile.read(n) if n else b""
        if len(data) != n:
            raise BadRequest("short body")
        return data

    def write_head(self, status, headers):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()

    def send(self, status, body, ctype=JSON_OK, headers=None, close=False):
        """One answer with Content-Length; a Content-Type in headers wins."""
        hs = []
        extra = list((headers or {}).items())
        if not any(k.lower() == "content-type" for k, _ in extra) and ctype:
            hs.append(("Content-Type", ctype))
        hs.append(("Content-Length", str(len(body))))
        hs.extend(extra)
        if close:
            hs.append(("Connection", "close"))
        self.write_head(status, hs)
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def send_json(self, status, obj, ctype=JSON_ERR, headers=None, close=False):
        body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        self.send(status, body, ctype=ctype, headers=headers, close=close)

    # ---- dispatch -------------------------------------------------------
    def handle_any(self):
        url = urlsplit(self.path)
        try:
            body = self.read_body()
        except BadRequest as e:
            self.close_connection = True
            try:
                self.send_json(400, {"message": "Bad request: %s" % e}, close=True)
            except OSError:
                pass
            return
        if url.path.startswith("/_control/"):
            return self.control(url.path, body)
        return self.api_request(url, body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = handle_any

    # ---- control ----------------------------------------------------------
    def control(self, path, body):
        st = self.server.state
        method = self.command
        if method == "GET" and path == "/_control/requests":
            with st.lock:
                reqs = list(st.requests)
            return self.send_json(200, {"requests": reqs}, ctype=JSON_OK)
        if method == "GET" and path == "/_control/stats":
            with st.lock:
                stats = {"connections": st.connections, "requests": len(st.requests),
                         "max_in_flight": st.max_in_flight, "in_flight": st.in_flight,
                         "cases": len(st.cases)}
            return self.send_json(200, stats, ctype=JSON_OK)
        if method == "GET" and path == "/_control/faults":
            with st.lock:
                faults = [dict(r) for r in st.faults]
            return self.send_json(200, {"faults": faults}, ctype=JSON_OK)
        if method == "POST" and path == "/_control/reset":
            st.reset()
            return self.send_json(200, {"ok": True}, ctype=JSON_OK)
        if method == "POST" and path == "/_control/fault":
            try:
                rule = check_rule(json.loads(body.decode("utf-8") or "{}"))
            except (UnicodeDecodeError, ValueError) as e:
                return self.send_json(400, {"message": "fault: not JSON: %s" % e})
            except Invalid as e:
                return self.send_json(400, {"message": "fault: %s" % e})
            with st.lock:
                st.faults.append(rule)
                n = len(st.faults)
            self.log_message("fault #%d: %s", n, json.dumps(rule))
            return self.send_json(200, {"ok": True, "faults": n}, ctype=JSON_OK)
        if path in ("/_control/config", "/_control/cases") and method in ("GET", "POST"):
            return self.control_cases(path, method, body)
        if method == "POST" and path == "/_control/shutdown":
            self.send_json(200, {"ok": True}, ctype=JSON_OK, close=True)
            threading.Thread(target=self.server.stop, daemon=True).start()
            return None
        return self.send_json(404, {"message": "Not found"})

    def control_cases(self, path, method, body):
        st = self.server.state
        if method == "POST":
            try:
                conf = json.loads(body.decode("utf-8") or "{}")
                if not isinstance(conf, dict):
                    raise Invalid("a JSON object")
                if path == "/_control/config":
                    known = ("unique_ids",)
                    if not isinstance(conf.get("unique_ids", False), bool):
                        raise Invalid("unique_ids must be true or false")
                else:
                    known = ("lag_ms", "hide", "unhide")
                    lag = _number(conf, "lag_ms")
                    hide = check_ids(conf.get("hide", []), "hide")
                    unhide = check_ids(conf.get("unhide", []), "unhide")
                for k in conf:
                    if k not in known:
                        raise Invalid("unknown setting %r (one of %s)" % (k, ", ".join(known)))
            except (UnicodeDecodeError, ValueError) as e:
                return self.send_json(400, {"message": "%s: not JSON: %s" % (path, e)})
            except Invalid as e:
                return self.send_json(400, {"message": "%s: %s" % (path, e)})
            with st.lock:
                if "unique_ids" in conf:
                    st.unique_ids = conf["unique_ids"]
                if path == "/_control/cases":
                    if lag is not None:
                        st.lag_ms = lag
                    st.hidden.update(hide)
                    st.hidden.difference_update(unhide)
            self.log_message("%s: %s", path, json.dumps(conf))
        if path == "/_control/config":
            with st.lock:
                out = {"unique_ids": st.unique_ids}
        else:
            out = st.cases_report()
        return self.send_json(200, out, ctype=JSON_OK)

    # ---- the API ----------------------------------------------------------
    def api_request(self, url, body):
        st = self.server.state
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        record = {
            "seq": 0, "connection": 0, "method": self.command, "path": url.path,
            "raw_query": url.query, "query": query,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body_b64": base64.b64encode(body).decode("ascii"), "time": time.monotonic(),
        }
        with st.lock:
            if self.conn_epoch != st.epoch:
                st.connections += 1
                self.conn_id = st.connections
                self.conn_epoch = st.epoch
            record["connection"] = self.conn_id
            st.requests.append(record)
            record["seq"] = len(st.requests)
            st.in_flight += 1
            st.max_in_flight = max(st.max_in_flight, st.in_flight)
            epoch = st.epoch
        # answer() computes the answer once per request; on a valid create it
        # stores the case, unless a rule says the fault came first (create: false)
        self.computed, self.store = None, True
        try:
            if url.path == API_PATH:
                endpoint = "create"
            elif CASE_PATH_RE.fullmatch(url.path):
                endpoint = "read"
            else:
                endpoint = None
            rule = st.take_fault(query.get("contactId"), endpoint)
            if rule is None:
                return self.send(*self.answer(url, query, body))
            self.log_message("applying fault %s", rule["action"])
            create = rule.get("create")
            self.store = (rule["action"] in ("delay", "hangup")) if create is None else create
            if create:
                self.answer(url, query, body)       # the case first, then the fault
            return self.misbehave(rule, url, query, body)
        except (ConnectionError, ssl.SSLError, TimeoutError):
            self.close_connection = True
            return None
        finally:
            with st.lock:
                if st.epoch == epoch:
                    st.in_flight -= 1

    def answer(self, url, query, body):
        """(status, body, content type, headers) for a request, no faults;
        computed once per request (a valid create stores its case then)."""
        if self.computed is None:
            self.computed = self.compute_answer(url, query, body)
        return self.computed

    def denied(self, write):
        """The error for this request's key (None: it may), for a create (write)
        or a read: the read-only key may not create, the create-only key not read."""
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        token = token.strip(" \t") if scheme.lower() == "bearer" else None
        if token == self.server.readonly_key and write:
            return err(403, "ERROR_UNAUTHORIZED_ACCESS", "This API key may not create cases")
        if token == self.server.create_only_key and not write:
            return err(403, "ERROR_UNAUTHORIZED_ACCESS", "This API key may not read cases")
        if token not in (self.server.key, self.server.readonly_key, self.server.create_only_key):
            return err(401, "ERROR_UNAUTHORIZED", "Invalid API key")
        return None

    def compute_answer(self, url, query, body):
        read = CASE_PATH_RE.fullmatch(url.path)
        if read:
            return self.read_answer(read.group(1), url)
        if url.path != API_PATH:
            return err(404, None, "Not found")
        if self.command != "POST":
            return err(405, None, "Method not allowed", {"Allow": "POST"})
        refused = self.denied(write=True)
        if refused:
            return refused
        contact = query.get("contactId")
        if contact is None or not CONTACT_RE.fullmatch(contact):
            return err(400, "ERROR_INVALID_INPUT", "contactId must be a positive integer")
        try:
            data = parse_body(body)
            validate(data)
        except Invalid as e:
            return err(400, "ERROR_INVALID_INPUT", str(e))
        if int(contact) != CONTACT:
            return err(404, None, "Contact not found")
        if not self.store:
            return 200, self.server.fixtures.render(data), JSON_OK, None
        case, unique = self.server.state.store_case(int(contact), data)
        self.log_message("stored case %d", case["id"])
        return 200, self.server.fixtures.render(data, case if unique else None), JSON_OK, None

    def read_answer(self, case_id, url):
        """GET /api/v1/crm/objects/case (case_id None) or .../case/{case_id}."""
        if self.command not in ("GET", "HEAD"):
            return err(405, None, "Method not allowed", {"Allow": "GET, HEAD"})
        refused = self.denied(write=False)
        if refused:
            return refused
        single = case_id is not None
        try:
            if single and not (DIGITS_RE.fullmatch(case_id) and int(case_id) > 0):
                raise Invalid("the case id must be a positive integer")
            q = parse_case_query(parse_qsl(url.query, keep_blank_values=True), single)
        except Invalid as e:
            return err(400, "ERROR_INVALID_INPUT", str(e))
        cases = self.server.state.visible_cases()
        contact = self.server.fixtures.contact
        if single:
            found = [c for c in cases if c["id"] == int(case_id)]
            if not found:
                return err(404, "ERROR_NOT_FOUND", "Case not found")
            out = {"data": case_view(found[0], q, contact)}
        else:
            out = {"data": list_cases(cases, q, contact)}
        return 200, json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode("utf-8"), \
            JSON_OK, None

    def misbehave(self, rule, url, query, body):
        action = rule["action"]
        if action != "delay" and rule.get("delay"):
            time.sleep(rule["delay"])
        if action == "delay":
            seconds = rule.get("seconds")
            if seconds is None:
                seconds = rule.get("delay") or 1
            time.sleep(seconds)
            return self.send(*self.answer(url, query, body))
        if action == "hangup":
            self.send(*self.answer(url, query, body))
            time.sleep(rule.get("seconds") or 0)
            self.close_connection = True
            return None
        if action == "status":
            status = rule.get("status") or 500
            if rule.get("body") is not None:
                out = rule["body"].encode("utf-8")
            elif status == 500:
                out = json.dumps({"type": "ERROR_SERVER_ERROR", "message": "Internal server error"},
                                 separators=(",", ":")).encode("utf-8")
            else:
                out = b""
            ctype = rule.get("content_type") or (JSON_ERR if out else None)
            return self.send(status, out, ctype=ctype, headers=rule.get("headers"))
        if action == "html":
            return self.send(rule.get("status") or 502, HTML_502, ctype="text/html",
                             headers=rule.get("headers"))
        if action == "invalid_json":
            return self.send(rule.get("status") or 200, b"<html>not json", ctype=JSON_ERR,
                             headers=rule.get("headers"))
        if action == "redirect":
            location = rule.get("location") or "/elsewhere"
            status = rule.get("status") or 302
            phrase = self.responses.get(status, ("Redirect",))[0]
            page = ("<html><head><title>%d %s</title></head><body>"
                    "<a href=\"%s\">moved</a></body></html>\n"
                    % (status, phrase, location)).encode("utf-8")
            hs = {"Location": location}
            hs.update(rule.get("headers") or {})
            return self.send(status, page, ctype="text/html", headers=hs)
        if action == "big":
            return self.send(200, self.big_body(rule.get("size") or (1 << 20), url, query, body),
                             headers=rule.get("headers"))
        if action == "raw":
            # bytes as given (latin-1), in "chunks" written "interval" s apart,
            # then the connection closed (unless "close": false, when the next
            # request on it gets the next rule): what no HTTP server would answer
            if rule.get("close", True):
                self.close_connection = True
            chunks = rule.get("chunks") or [rule.get("body") or ""]
            for i, part in enumerate(chunks):
                if i:
                    time.sleep(rule.get("interval") or 0.05)
                self.wfile.write(part.encode("latin-1"))
                self.wfile.flush()
            return None
        if action == "reset":
            return self.reset_connection()
        if action == "hang":
            return self.hang()
        status, out, ctype, headers = self.answer(url, query, body)
        hs = [("Content-Type", ctype)]
        hs.extend((headers or {}).items())
        hs.extend((rule.get("headers") or {}).items())
        if action == "truncate":
            # the full length announced, half the body sent, then FIN
            self.close_connection = True
            self.write_head(status, hs + [("Content-Length", str(len(out)))])
            self.wfile.write(out[: len(out) // 2])
            self.wfile.flush()
            return None
        if action == "trickle":
            interval = rule.get("interval")
            interval = 0.5 if interval is None else interval
            self.write_head(status, hs + [("Content-Length", str(len(out)))])
            self.wfile.flush()
            for i in range(0, len(out), 16):
                if i:
                    time.sleep(interval)
                self.wfile.write(out[i:i + 16])
                self.wfile.flush()
            return None
        if action == "chunked":
            self.write_head(status, hs + [("Transfer-Encoding", "chunked")])
            step = max(1, (len(out) + 4) // 5)
            for i in range(0, len(out), step):
                part = out[i:i + step]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            return None
        if action == "gzip":
            if "gzip" in (self.headers.get("Accept-Encoding") or "").lower():
                out = gzip.compress(out)
                hs.append(("Content-Encoding", "gzip"))
            hs.append(("Vary", "Accept-Encoding"))
            return self.send(status, out, ctype=None, headers=dict(hs))
        if action == "close":
            self.close_connection = True
            return self.send(status, out, ctype=None, headers=dict(hs), close=True)
        raise AssertionError("unhandled action %r" % action)   # check_rule prevents this

    def big_body(self, size, url, query, body):
        """The documented answer with a padding member: valid JSON, >= size bytes."""
        status, doc, _, _ = self.answer(url, query, body)
        if status != 200 or not doc.startswith(b"{\n"):    # not the create's answer
            try:
                data = parse_body(body)
                validate(data)
                doc = self.server.fixtures.render(data)
            except Invalid:
                doc = self.server.fixtures.response_bytes
        head = b'{\n    "padding": "'
        tail = b'",' + doc[doc.index(b"{") + 1:]
        pad = max(0, size - len(head) - len(tail))
        return head + b"x" * pad + tail

    def reset_connection(self):
        """Close with RST (SO_LINGER on, 0 s): the request read, no answer."""
        self.close_connection = True
        sock = self.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()          # its reference keeps the fd open otherwise
            sock.close()
        except OSError:
            pass
        return None

    def hang(self):
        """Never answer; hold the connection until the client closes it or the server stops."""
        self.close_connection = True
        sock = self.connection
        sock.settimeout(0.5)
        while not self.server.stopping.is_set():
            try:
                readable, _, _ = select.select([sock], [], [], 0.5)
            except (OSError, ValueError):
                break
            if not readable:
                continue
            try:
                if not sock.recv(65536):
                    break               # the client went away
            except (ssl.SSLWantReadError, socket.timeout):
                continue
            except OSError:
                break
        return None


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    ssl_ctx = None

    def stop(self):
        self.stopping.set()
        for s in self.group:
            threading.Thread(target=s.shutdown, daemon=True).start()

    def finish_request(self, request, client_address):
        if self.ssl_ctx is None:
            return super().finish_request(request, client_address)
        # TLS handshake here, in the connection's thread, so a client that
        # stalls it cannot block accept()
        try:
            request.settimeout(10)
            tls = self.ssl_ctx.wrap_socket(request, server_side=True)
            tls.settimeout(None)
        except (OSError, ValueError) as e:
            if self.verbose:
                sys.stderr.write("acquire_server: %s TLS handshake failed: %s\n"
                                 % (client_address[0], e))
            return None
        try:
            return super().finish_request(tls, client_address)
        finally:
            self.shutdown_request(tls)

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, ssl.SSLError, TimeoutError)) and not self.verbose:
            return
        sys.stderr.write("acquire_server: error serving %s:\n%s"
                         % (client_address[0], traceback.format_exc()))
        sys.stderr.flush()


# ---------------------------------------------------------------------------

def self_check(fx):
    """The documented request gets the documented answer byte for byte; the
    reopen answer differs in exactly the documented values; types are checked."""
    data = parse_body(fx.request_bytes)
    validate(data)
    if fx.render(data) != fx.response_bytes:
        raise FixtureError("the documented request does not get create-case-response.json back")
    reopen = dict(data, threadId=1683, sessionId=3711819272)
    got = json.loads(fx.render(reopen))
    want = json.loads(fx.response_bytes)
    want["data"].update(id=1694, dateCreated="2021-03-24T11:08:17.000Z",
                        dateQueue="2021-03-24T11:08:17.400Z")
    want["data"]["contact"]["dateUpdated"] = "2021-03-24T11:08:17.498Z"
    if got != want or got["data"]["threadId"] != 1683 or got["data"]["parentId"] != 1683:
        raise FixtureError("the reopen answer is not the documented one")
    echoed = json.loads(fx.render({"title": "Hé \"x\"", "message": {"message": "m\u2028"}}))
    if echoed["data"]["title"] != "Hé \"x\"" or echoed["data"]["description"] != "m\u2028":
        raise FixtureError("title/description echo")
    absent = json.loads(fx.render({}))
    if absent["data"]["title"] is not None or absent["data"]["description"] is not None:
        raise FixtureError("absent title/description must be null")
    bad = [b"{", b"[]", b"\xff", b'{"agentId": 1.0}', b'{"agentId": 1e2}', b'{"agentId": true}',
           b'{"fields": {"a": []}}', b'{"mentionUsers": [1]}', b'{"message": "x"}',
           b'{"isFromCobrowse": 1}', b'{"title": null}', b'{"x": NaN}']
    for raw in bad:
        try:
            validate(parse_body(raw))
        except Invalid:
            continue
        raise FixtureError("accepted an invalid body: %r" % raw)
    for raw in (b"", b"  ", b'{"unknown": [1, {"a": 2}]}', b'{"sessionId": 3711819272}',
                b'{"fields": {"a": 1.5, "b": null, "c": true, "d": "x"}}'):
        validate(parse_body(raw))
    check_cases(fx, data)


ISO_MS_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")


def check_cases(fx, data):
    """Stored cases, the unique_ids answer and the case list's query rules."""
    st = State()
    case, _ = st.store_case(CONTACT, data)
    other, _ = st.store_case(CONTACT, dict(data, title="other", threadId=7, sessionId=8))
    if (case["id"], other["id"]) != (FIRST_CASE_ID, FIRST_CASE_ID + 1) or \
            not ISO_MS_RE.fullmatch(case["dateCreated"]) or case["title"] != "string" or \
            case["description"] != "I'm reopening the closed case" or case["threadId"] != case["id"] \
            or (other["threadId"], other["parentId"]) != (7, 7):
        raise FixtureError("a stored case is not the one created: %r" % case)
    got, want = json.loads(fx.render(data, case)), json.loads(fx.response_bytes)
    want["data"].update(id=case["id"], threadId=case["id"], dateCreated=case["dateCreated"])
    if got != want:
        raise FixtureError("the unique_ids answer differs from the documented one beyond id, "
                           "threadId and dateCreated")
    q = parse_case_query([("where", "contactId|eq|%d" % CONTACT), ("where[]", "title|eq|string"),
                          ("select", "id|title"), ("relations", "contact"), ("limit", "1")])
    listed = list_cases(st.visible_cases(), q, fx.contact)
    if listed != {"page": 0, "offset": 0, "limit": 1, "count": 1,
                  "data": [{"id": case["id"], "title": "string", "contact": fx.contact}]}:
        raise FixtureError("the case list: %r" % listed)
    q = parse_case_query([("offset", "1"), ("page", "5"), ("limit", "1")])
    if [c["id"] for c in list_cases(st.visible_cases(), q, None)["data"]] != [other["id"]]:
        raise FixtureError("the case list's offset")
    for pairs in ([("where", "foo|eq|1")], [("where", "title|like|x")], [("where", "id|eq|x")],
                  [("where", "title")], [("limit", "0")], [("page", "-1")], [("sort", "id")],
                  [("select", "id|nope")], [("limit", "1"), ("limit", "2")]):
        try:
            parse_case_query(pairs)
        except Invalid:
            continue
        raise FixtureError("the case list accepted %r" % pairs)


def parent_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:    # a zombie is gone too (PID 1 in a container may not reap it)
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def watch_parent(pid):
    while True:
        time.sleep(0.5)
        if not parent_alive(pid):
            os._exit(0)


def checked_fixtures(directory, name):
    """The fixtures in directory, checked by self_check; on any disagreement the
    server says so (as name) and exits 2: it never runs against fixtures it doubts."""
    try:
        fixtures = Fixtures(directory)
        self_check(fixtures)
    except (OSError, FixtureError, Invalid, ValueError) as e:
        sys.stderr.write("%s: fixtures: %s\n" % (name, e))
        sys.exit(2)
    return fixtures


def spec_server_arguments(description):
    """The command line every server in spec/server/ shares, the one spec/helper.lua
    starts them with: --host, --port, --port-file, --parent-pid."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file")
    p.add_argument("--parent-pid", type=int)
    return p


def write_port_file(path, line):
    """line and a newline to path, atomically (the launcher polls for it)."""
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(line + "\n")
    os.rename(tmp, path)


def follow_parent(pid):
    """With a pid: exit when that process is gone (a daemon thread watches it)."""
    if pid:
        threading.Thread(target=watch_parent, args=(pid,), daemon=True).start()


def close_inherited_fds():
    """The Lua process that starts us may leak its sockets into us (no
    FD_CLOEXEC): holding them would keep them open after the spec closes them."""
    try:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        return
    for fd in fds:
        if fd > 2:
            try:
                os.close(fd)
            except OSError:
                pass


def main():
    close_inherited_fds()
    here = os.path.dirname(os.path.abspath(__file__))
    p = spec_server_arguments("The local Acquire server.")
    p.add_argument("--key", default="test-key")
    p.add_argument("--readonly-key", default="readonly-key")
    p.add_argument("--create-only-key", default="create-only-key",
                   help="a key that may create cases but not read them (403 on the reads)")
    p.add_argument("--fixtures", default=os.path.normpath(os.path.join(here, "..", "fixtures", "api")))
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--self-check", action="store_true",
                   help="check the fixtures and the body rules, then exit")
    a = p.parse_args()
    if bool(a.tls_cert) != bool(a.tls_key):
        p.error("--tls-cert and --tls-key go together")

    fixtures = checked_fixtures(a.fixtures, "acquire_server")
    if a.self_check:
        print("self-check ok: %s" % fixtures.dir, flush=True)
        return

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGHUP, lambda *_: os._exit(0))

    family = socket.AF_INET6 if ":" in a.host else socket.AF_INET

    def make(port):
        cls = type("Server", (Server,), {"address_family": family})
        s = cls((a.host, port), Handler)
        s.state, s.fixtures, s.verbose, s.stopping = state, fixtures, a.verbose, stopping
        s.key, s.readonly_key, s.create_only_key = a.key, a.readonly_key, a.create_only_key
        return s

    state, stopping = State(), threading.Event()
    srv = make(a.port)
    group = [srv]
    scheme, control_port = "http", None
    if a.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        srv.ssl_ctx = ctx
        scheme = "https"
        ctl = make(0)         # plain HTTP, same state: control calls from clients without TLS
        group.append(ctl)
        control_port = ctl.server_address[1]
    for s in group:
        s.group = group
    port = srv.server_address[1]

    if a.port_file:
        line = "%d %d" % (port, os.getpid())
        if control_port:
            line += " %d" % control_port
        write_port_file(a.port_file, line)
    host = "[%s]" % a.host if ":" in a.host else a.host
    print("listening on %s://%s:%d" % (scheme, host, port), flush=True)
    if control_port:
        print("control on http://%s:%d" % (host, control_port), flush=True)
    follow_parent(a.parent_pid)
    if len(group) > 1:
        threading.Thread(target=group[1].serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True).start()
    try:
        srv.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        stopping.set()
        for s in group:
            s.server_close()
        sys.stdout.flush()
        os._exit(0)     # no waiting on connection threads (a hang, a trickle)


if __name__ == "__main__":
    main()
