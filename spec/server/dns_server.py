#!/usr/bin/env python3
"""A DNS server on loopback (UDP) for the specs' nginx resolver.

It answers A queries for the names it was given and never answers any other
query, so a resolver asking for them waits its whole timeout. Standard library
only (Debian's python3); the command line of the other spec servers.

    dns_server.py [--host 127.0.0.1] [--port 0] [--port-file F] [--parent-pid P]
                  [--count-file C] [--answer NAME=IP]...

The port file gets "PORT PID\\n", written atomically once the socket is bound;
the count file, how many queries were read so far (rewritten atomically on each).
"""
import os
import signal
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from acquire_server import (  # noqa: E402  (the spec servers' command line)
    follow_parent, spec_server_arguments, write_port_file)


def question(q):
    """(the queried name, lowercased; its type; the end of the question section)."""
    labels, i = [], 12
    while i < len(q) and q[i]:
        labels.append(q[i + 1:i + 1 + q[i]].decode("ascii", "replace"))
        i += 1 + q[i]
    qtype = struct.unpack("!H", q[i + 1:i + 3])[0] if i + 3 <= len(q) else 0
    return ".".join(labels).lower(), qtype, i + 5


def answer(q, end, ip):
    """The response to query q: its question, and one A record (TTL 60) for ip."""
    head = q[:2] + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0)
    rr = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(ip)
    return head + q[12:end] + rr


def main():
    p = spec_server_arguments("A DNS server that answers only the names it is given.")
    p.add_argument("--count-file")
    p.add_argument("--answer", action="append", default=[], metavar="NAME=IP")
    a = p.parse_args()
    answers = {}
    for item in a.answer:
        name, sep, ip = item.partition("=")
        if not sep:
            p.error("--answer takes NAME=IP, not %r" % item)
        answers[name.lower()] = ip

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a.host, a.port))
    if a.port_file:
        write_port_file(a.port_file, "%d %d" % (s.getsockname()[1], os.getpid()))
    follow_parent(a.parent_pid)
    n = 0
    while True:
        q, peer = s.recvfrom(4096)
        n += 1
        if a.count_file:
            write_port_file(a.count_file, str(n))
        name, qtype, end = question(q)
        ip = answers.get(name)
        if ip is None or qtype != 1:
            continue                                   # silence
        s.sendto(answer(q, end, ip), peer)


if __name__ == "__main__":
    sys.exit(main())
