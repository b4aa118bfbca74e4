#!/usr/bin/env python3
"""The hostile proxy: a real forward proxy on loopback (absolute-form requests
for http targets, CONNECT tunnels for https ones) that picks, per connection
(CONNECT) or per request (absolute-form), a behaviour from its own seeded RNG:
it behaves, refuses, closes, garbles, trickles or resets. It logs what it did
and whether it forwarded anything to the target; the target (the chaos
server) keeps its own log of what it received, the checker's ground truth.

    chaos_proxy.py [--host 127.0.0.1] [--port-file F] [--parent-pid P]
                   [--seed S] [--verbose]

The port file gets "PORT PID CONTROL_PORT\\n", written atomically (the
command line and port file of every server in spec/server/). The control port
is a separate plain HTTP listener, never proxied, never hostile.

Control endpoints (JSON):
    GET  /_control/log        {"seed", "events": [...]} (waits up to 3 s for
                              events still under way)
    POST /_control/reset      clears the log, the forced modes and the weights;
                              reseeds with {"seed"?} if given
    POST /_control/config     {"seed"?, "connect"?: {mode: weight},
                               "absolute"?: {mode: weight},
                               "force"?: [{"mode", "count"?}, ...]}
                              (force: the next connections'/requests' modes,
                              in order, before any drawn one; a forced mode of
                              the other kind is skipped over)
    GET  /_control/behaviours the modes of each kind
    POST /_control/shutdown   answers, then stops

An event: {seq, conn, kind ("connect" | "absolute"), target ("host:port"),
mode, forwarded (the request, or for a tunnel any of the client's bytes,
went to the target), up (bytes sent to the target), down (bytes sent back to
the client), marker (absolute-form: the body's "title"), method, status (the
proxy's own answer, if it gave one), note, t, done}.

Standard library only (Debian's python3).
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
from acquire_server import (  # noqa: E402
    Invalid, Server as PlainServer, close_inherited_fds, follow_parent,
    spec_server_arguments, write_port_file)

# Per CONNECT (the whole tunnel's connection).
CONNECT_MODES = {
    "behave": 40,
    "c407": 3,             # 407 Proxy Authentication Required, then close
    "c403": 2,             # 403 Forbidden
    "c500": 2,             # 500 of its own
    "c502": 3,             # 502 Bad Gateway
    "close_connect": 3,    # FIN right after reading the CONNECT: nothing forwarded
    "connect_close": 2,    # the target connected to, then FIN to the client without answering
    "rst_connect": 2,      # RST right after reading the CONNECT
    "garbage_200": 3,      # "200 Connection established", then garbage, then close
    "trickle_up": 3,       # a tunnel whose client->target bytes go out slowly
    "trickle_down": 3,     # a tunnel whose target->client bytes come back slowly
    "tunnel_cut": 5,       # a tunnel reset (both sides) after a random number of client bytes
}

# Per absolute-form request (an http target).
ABSOLUTE_MODES = {
    "behave": 40,
    "p407": 4,             # a 407 of its own, not forwarded
    "p502": 2,             # a 502 of its own, not forwarded
    "close_before": 3,     # the request read in full, FIN: not forwarded
    "rst_before": 2,       # the same, RST
    "close_after": 4,      # forwarded in full, then FIN to the client: no answer relayed
    "rst_after": 4,        # forwarded, the target's first answer byte awaited, then RST: no answer relayed
    "trickle_up": 3,       # the request goes to the target slowly
    "trickle_down": 3,     # the answer comes back slowly
}

MODES = {"connect": CONNECT_MODES, "absolute": ABSOLUTE_MODES}

TITLE_RE = re.compile(rb'"title"\s*:\s*"((?:[^"\\]|\\.)*)"')
REASONS = {403: "Forbidden", 407: "Proxy Authentication Required",
           500: "Internal Server Error", 502: "Bad Gateway"}


def jdump(obj):
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


# ---------------------------------------------------------------------------
# Moving bytes: a two-way pipe that passes a FIN on as a FIN and a reset as a
# reset. Either side may be a TLS socket (chaos_server.py's --tls relay uses it).

def rst(sock):
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def half_close(sock):
    """FIN towards sock's peer (for TLS: no close_notify, a bare TCP FIN)."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_WR)
    except (OSError, ValueError):
        pass


def read_some(sock, n=65536):
    """bytes; b"" at EOF; None when nothing is there yet; "rst" when reset."""
    try:
        sock.settimeout(0.05)
        return sock.recv(n)
    except (socket.timeout, ssl.SSLWantReadError, BlockingIOError, InterruptedError):
        return None
    except ssl.SSLEOFError:
        return b""
    except ssl.SSLZeroReturnError:
        return b""
    except (ConnectionResetError, BrokenPipeError):
        return "rst"
    except (OSError, ValueError):
        return "rst"


def send_all(sock, data, trickle=None):
    """Writes data (in slow pieces with trickle = (rng, lock)); False on failure."""
    try:
        sock.settimeout(10)
        if trickle is None:
            sock.sendall(data)
            return True
        rng, lock = trickle
        i = 0
        while i < len(data):
            with lock:
                n, pause = rng.randint(1, 64), rng.uniform(0.0005, 0.003)
            sock.sendall(data[i:i + n])
            i += n
            time.sleep(pause)
        return True
    except (OSError, ValueError):
        return False


def pipe(a, b, stopping, up_trickle=None, down_trickle=None, cut_after=None, on_up=None,
         on_down=None):
    """Copies a->b ("up") and b->a ("down") until both directions ended or one side
    was reset (the reset passed on). cut_after: after that many up bytes went
    out, both sides are reset. on_up(n)/on_down(n): counts. Closes both."""
    up_open = down_open = True
    sent_up = 0
    try:
        while (up_open or down_open) and not stopping.is_set():
            socks = ([a] if up_open else []) + ([b] if down_open else [])
            ready = [s for s in socks if isinstance(s, ssl.SSLSocket) and s.pending()]
            if not ready:
                try:
                    ready, _, _ = select.select(socks, [], [], 0.2)
                except (OSError, ValueError):
                    break
            for s in ready:
                src, dst = (a, b) if s is a else (b, a)
                data = read_some(src)
                if data is None:
                    continue
                if data == "rst":
                    rst(dst)
                    rst(src)
                    return
                if data == b"":
                    half_close(dst)
                    if src is a:
                        up_open = False
                    else:
                        down_open = False
                    continue
                if src is a:
                    if cut_after is not None and sent_up + len(data) >= cut_after:
                        data = data[:max(0, cut_after - sent_up)]
                        if data:
                            send_all(b, data)
                            sent_up += len(data)
                            if on_up:
                                on_up(len(data))
                        rst(a)
                        rst(b)
                        return
                    if not send_all(b, data, up_trickle):
                        rst(a)
                        rst(b)
                        return
                    sent_up += len(data)
                    if on_up:
                        on_up(len(data))
                else:
                    if not send_all(a, data, down_trickle):
                        rst(a)
                        rst(b)
                        return
                    if on_down:
                        on_down(len(data))
    finally:
        for s in (a, b):
            try:
                s.close()
            except OSError:
                pass


# ---------------------------------------------------------------------------

class State:
    def __init__(self, seed):
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.conns = 0
        self.t0 = time.time()
        self.reset(seed)

    def reset(self, seed=None):
        with self.lock:
            if seed is not None or not hasattr(self, "rng"):
                self.reseed(seed)
            self.log = []
            self.force = []
            self.weights = {k: {m: float(w) for m, w in v.items()} for k, v in MODES.items()}
            self.cond.notify_all()

    def reseed(self, seed):
        self.seed = seed
        self.rng = random.Random(seed)

    def new_conn(self):
        with self.lock:
            self.conns += 1
            return self.conns

    def pick(self, kind):
        """(mode, a salt for its own random parameters)."""
        with self.lock:
            rng = self.rng
            for i, f in enumerate(self.force):
                if f["mode"] in MODES[kind]:
                    f["count"] -= 1
                    if f["count"] <= 0:
                        self.force.pop(i)
                    return f["mode"], rng.getrandbits(64)
            w = self.weights[kind]
            names = sorted(n for n, v in w.items() if v > 0) or ["behave"]
            return rng.choices(names, [w.get(n, 1) for n in names])[0], rng.getrandbits(64)

    def event(self, **ev):
        with self.lock:
            ev["seq"] = len(self.log) + 1
            ev["t"] = round(time.time() - self.t0, 6)
            ev.setdefault("forwarded", False)
            ev.setdefault("up", 0)
            ev.setdefault("down", 0)
            ev.setdefault("done", False)
            self.log.append(ev)
            return ev

    def update(self, ev, **kw):
        with self.lock:
            ev.update(kw)
            self.cond.notify_all()

    def add(self, ev, key, n):
        with self.lock:
            ev[key] += n

    def snapshot(self, wait=3.0):
        deadline = time.time() + wait
        with self.lock:
            while any(not e["done"] for e in self.log) and time.time() < deadline:
                self.cond.wait(0.05)
            return {"seed": self.seed, "pending": sum(1 for e in self.log if not e["done"]),
                    "events": [dict(e) for e in self.log]}


class Conn:
    def __init__(self, server, sock):
        self.server, self.sock, self.state = server, sock, server.state
        self.id = self.state.new_conn()
        self.buf = b""

    def read_head(self):
        """The request head (up to the blank line), the rest kept in self.buf."""
        deadline = time.time() + 30
        while b"\r\n\r\n" not in self.buf:
            if self.server.stopping.is_set() or time.time() > deadline or len(self.buf) > 65536:
                return None
            data = read_some(self.sock)
            if data is None:
                continue
            if data == b"" or data == "rst":
                return None
            self.buf += data
        end = self.buf.index(b"\r\n\r\n") + 4
        head, self.buf = self.buf[:end], self.buf[end:]
        return head

    def read_body(self, n):
        deadline = time.time() + 30
        while len(self.buf) < n:
            if self.server.stopping.is_set() or time.time() > deadline:
                return None
            data = read_some(self.sock)
            if data is None:
                continue
            if data == b"" or data == "rst":
                return None
            self.buf += data
        body, self.buf = self.buf[:n], self.buf[n:]
        return body

    def answer(self, status, extra=b""):
        body = jdump({"message": "chaos proxy: %d" % status})
        head = (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n" % (status, REASONS[status].encode(), len(body)))
        if status == 407:
            head += b'Proxy-Authenticate: Basic realm="chaos"\r\n'
        send_all(self.sock, head + extra + b"\r\n" + body)
        half_close(self.sock)
        # read what the client still sends, briefly, so the close is a FIN, not a reset
        end = time.time() + 0.2
        while time.time() < end:
            d = read_some(self.sock)
            if d == b"" or d == "rst":
                break
        self.sock.close()

    def connect(self, target):
        host, _, port = target.rpartition(":")
        host = host.strip("[]")
        try:
            return socket.create_connection((host, int(port)), timeout=5)
        except (OSError, ValueError):
            return None

    def run(self):
        head = self.read_head()
        if head is None:
            return self.sock.close()
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ")
        if len(parts) != 3:
            return rst(self.sock)
        method, target, _ = parts
        if method == "CONNECT":
            return self.tunnel(target)
        return self.absolute(method, target, head)

    # ---- CONNECT ------------------------------------------------------------
    def tunnel(self, target):
        mode, salt = self.state.pick("connect")
        rng = random.Random(salt)
        ev = self.state.event(conn=self.id, kind="connect", target=target, mode=mode)
        try:
            if mode in ("c407", "c403", "c500", "c502"):
                status = int(mode[1:])
                self.state.update(ev, status=status)
                return self.answer(status)
            if mode == "close_connect":
                half_close(self.sock)
                return self.sock.close()
            if mode == "rst_connect":
                return rst(self.sock)
            if mode == "garbage_200":
                junk = rng.choice([b"\x00\x01\x02garbage\r\n", b"HTTP/1.1 200 OK\r\n\r\n",
                                   bytes(rng.getrandbits(8) for _ in range(40)), b"\x16\x03\x01\x00"])
                self.state.update(ev, status=200, note="garbage %r" % junk[:16])
                send_all(self.sock, b"HTTP/1.1 200 Connection established\r\n\r\n" + junk)
                half_close(self.sock)
                time.sleep(0.05)
                return rst(self.sock)
            up = self.connect(target)
            if up is None:
                self.state.update(ev, status=502, note="target unreachable")
                return self.answer(502)
            if mode == "connect_close":
                self.state.update(ev, note="connected to the target, closed without answering")
                half_close(self.sock)
                self.sock.close()
                return up.close()
            up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.state.update(ev, status=200)
            if not send_all(self.sock, b"HTTP/1.1 200 Connection established\r\n\r\n"):
                return rst(up)
            lock = threading.Lock()
            first = self.buf
            self.buf = b""

            def on_up(n):
                self.state.add(ev, "up", n)
                if not ev["forwarded"]:
                    self.state.update(ev, forwarded=True)
            if first:
                send_all(up, first)
                on_up(len(first))
            cut = None
            if mode == "tunnel_cut":
                cut = rng.randint(200, 4000)
                self.state.update(ev, note="cut after %d bytes up" % cut)
            pipe(self.sock, up, self.server.stopping,
                 up_trickle=(rng, lock) if mode == "trickle_up" else None,
                 down_trickle=(rng, lock) if mode == "trickle_down" else None,
                 cut_after=cut, on_up=on_up, on_down=lambda n: self.state.add(ev, "down", n))
        finally:
            self.state.update(ev, done=True)

    # ---- absolute-form ----------------------------------------------------------
    def absolute(self, method, target, head):
        m = re.match(r"^http://([^/]+)(/.*)?$", target)
        lines = head.decode("latin-1").split("\r\n")
        length = 0
        for h in lines[1:]:
            name, _, value = h.partition(":")
            if name.strip().lower() == "content-length":
                try:
                    length = max(0, int(value.strip()))
                except ValueError:
                    length = 0
        body = self.read_body(length) if length else b""
        if body is None:
            return self.sock.close()
        mk = TITLE_RE.search(body)
        try:
            marker = json.loads(b'"' + mk.group(1) + b'"') if mk else None
        except ValueError:
            marker = None
        mode, salt = self.state.pick("absolute")
        rng = random.Random(salt)
        ev = self.state.event(conn=self.id, kind="absolute", target=m and m.group(1) or target,
                              mode=mode, marker=marker, method=method)
        try:
            if not m:
                self.state.update(ev, status=400, note="not absolute-form")
                return rst(self.sock)
            if mode in ("p407", "p502"):
                self.state.update(ev, status=int(mode[1:]))
                return self.answer(int(mode[1:]))
            if mode == "close_before":
                half_close(self.sock)
                return self.sock.close()
            if mode == "rst_before":
                return rst(self.sock)
            up = self.connect(m.group(1))
            if up is None:
                self.state.update(ev, status=502, note="target unreachable")
                return self.answer(502)
            up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            out = ["%s %s HTTP/1.1" % (method, m.group(2) or "/")]
            for h in lines[1:]:
                name = h.partition(":")[0].strip().lower()
                if h and name not in ("proxy-authorization", "proxy-connection"):
                    out.append(h)
            request = ("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + body
            lock = threading.Lock()
            ok = send_all(up, request, (rng, lock) if mode == "trickle_up" else None)
            self.state.update(ev, forwarded=True, up=len(request), note=None if ok else "send failed")
            if not ok:
                rst(up)
                return rst(self.sock)
            if mode == "close_after":
                half_close(self.sock)
                self.sock.close()
                # the target's answer (or close) awaited, bounded, so the event ends after it
                select.select([up], [], [], 2)
                return up.close()
            if mode == "rst_after":
                end = time.time() + 2
                while time.time() < end:
                    r, _, _ = select.select([up], [], [], 0.1)
                    if r:
                        break
                rst(self.sock)
                return up.close()
            if self.buf:
                send_all(up, self.buf)
                self.buf = b""
            pipe(self.sock, up, self.server.stopping,
                 down_trickle=(rng, lock) if mode == "trickle_down" else None,
                 on_down=lambda n: self.state.add(ev, "down", n))
        finally:
            self.state.update(ev, done=True)


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        Conn(self.server, self.request).run()

    def finish(self):
        pass


class ProxyServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def shutdown_request(self, request):
        try:
            request.close()
        except OSError:
            pass

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


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
            sys.stderr.write("chaos_proxy control: %s\n" % (fmt % args))

    def reply(self, status, obj):
        body = jdump(obj)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_GET(self):
        if self.path == "/_control/log":
            return self.reply(200, self.server.state.snapshot())
        if self.path == "/_control/behaviours":
            return self.reply(200, {k: sorted(v) for k, v in MODES.items()})
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
                weights = {}
                for kind in MODES:
                    given = body.get(kind, {})
                    if given == []:
                        given = {}
                    if not isinstance(given, dict):
                        raise Invalid("%s is an object of weights" % kind)
                    for k, w in given.items():
                        if k not in MODES[kind]:
                            raise Invalid("unknown %s mode %r (one of %s)"
                                          % (kind, k, ", ".join(sorted(MODES[kind]))))
                        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                            raise Invalid("weight for %r must be a number >= 0" % k)
                    weights[kind] = {k: float(w) for k, w in given.items()}
                force = body.get("force", [])
                if force == {}:
                    force = []
                if not isinstance(force, list):
                    raise Invalid("force is a list")
                forced = []
                for f in force:
                    if not isinstance(f, dict) or not any(f.get("mode") in v for v in MODES.values()):
                        raise Invalid("a forced mode is {mode, count?} with a known mode")
                    c = f.get("count", 1)
                    if isinstance(c, float) and c.is_integer():
                        c = int(c)
                    if not isinstance(c, int) or isinstance(c, bool) or c < 1:
                        raise Invalid("count must be a positive integer")
                    forced.append({"mode": f["mode"], "count": c})
                with st.lock:
                    if "seed" in body:
                        st.reseed(check_seed(body["seed"]))
                    for kind, w in weights.items():
                        st.weights[kind].update(w)
                    st.force.extend(forced)
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
    p = spec_server_arguments("The hostile proxy.")
    p.add_argument("--seed", type=int)
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args()
    seed = a.seed if a.seed is not None else int(time.time())
    stopping = threading.Event()
    state = State(seed)
    family = socket.AF_INET6 if ":" in a.host else socket.AF_INET
    proxy = type("P", (ProxyServer,), {"address_family": family})((a.host, a.port), Handler)
    proxy.state, proxy.stopping = state, stopping
    ctl = type("C", (PlainServer,), {"address_family": family})((a.host, 0), ControlHandler)
    ctl.state, ctl.verbose, ctl.stopping = state, a.verbose, stopping

    def stop_all():
        stopping.set()
        proxy.shutdown()
        ctl.shutdown()
    ctl.stop_all = stop_all
    port, control_port = proxy.server_address[1], ctl.server_address[1]
    if a.port_file:
        write_port_file(a.port_file, "%d %d %d" % (port, os.getpid(), control_port))
    print("chaos_proxy: seed %d, listening on %s:%d, control on %d"
          % (seed, a.host, port, control_port), flush=True)
    follow_parent(a.parent_pid)
    threading.Thread(target=ctl.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    try:
        proxy.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        stopping.set()
        proxy.server_close()
        ctl.server_close()
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
