#!/usr/bin/env python3
"""Transport-level hostile clients against a running poolgate (issue 13, the HTTP row).

    python3 bench/transport_probe.py HOST:PORT [--wait SECS] [--tls]

Prints, for each probe, how long the server kept the connection or what it answered:
  silent      a TCP connection that sends nothing
  drip        a request line and headers sent one byte every 0.5 s, never finished
  keepalive   an idle keep-alive connection after one complete request
  per-address how many simultaneous connections one address may open (up to 1500)
  origin      the status WebSocket with a foreign Origin (needs a JWT: POOLGATE_JWT, and
              POOLGATE_CLIENT_ID; skipped without them)
  metrics     whether /metrics answers on this port
Standard library only; `--wait` bounds each timing probe (default 40 s).
"""

import os
import socket
import ssl
import sys
import threading
import time


def connect(addr, tls):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s = ctx.wrap_socket(s, server_hostname=host)
    return s


def lifetime(s, wait, drip=None):
    """Seconds until the server closes `s` (None: still open after `wait`), and what it sent."""
    start = time.monotonic()
    got = b""
    s.settimeout(0.25)
    pending = list(drip or b"")
    next_drip = start
    while time.monotonic() - start < wait:
        if pending and time.monotonic() >= next_drip:
            try:
                s.send(bytes([pending.pop(0)]))
            except OSError:
                return time.monotonic() - start, got
            next_drip += 0.5
        try:
            chunk = s.recv(4096)
        except socket.timeout:
            continue
        except OSError:
            return time.monotonic() - start, got
        if not chunk:
            return time.monotonic() - start, got
        got += chunk
    return None, got


def first_line(data):
    return data.split(b"\r\n", 1)[0].decode(errors="replace") if data else "closed"


def report(name, result):
    took, got = result
    first = got.split(b"\r\n", 1)[0].decode(errors="replace") if got else "nothing"
    if took is None:
        print(f"{name:12} still open after the wait; received: {first}")
    else:
        print(f"{name:12} closed after {took:.1f} s; received: {first}")


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__)
        sys.exit(2)
    addr = args[0]
    tls = "--tls" in args
    wait = float(args[args.index("--wait") + 1]) if "--wait" in args else 40.0
    host = addr.rsplit(":", 1)[0]

    results = {}

    def run(name, fn):
        results[name] = fn()

    silent = lambda: lifetime(connect(addr, tls), wait)
    drip = lambda: lifetime(
        connect(addr, tls), wait,
        drip=f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode() + b"a" * 200)

    def keepalive():
        s = connect(addr, tls)
        s.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        s.settimeout(5)
        s.recv(4096)
        return lifetime(s, wait)

    threads = [threading.Thread(target=run, args=(n, f))
               for n, f in [("silent", silent), ("drip", drip), ("keepalive", keepalive)]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in ["silent", "drip", "keepalive"]:
        report(name, results[name])

    held, failed = [], None
    for _ in range(1500):
        try:
            held.append(connect(addr, tls))
        except OSError as e:
            failed = f"connect failed: {e}"
            break
    time.sleep(1.0)
    answered, answer = 0, None
    for s in held:
        s.setblocking(False)
        try:
            data = s.recv(300)
        except BlockingIOError:
            continue
        except OSError as e:
            data = f"error {e}".encode()
        answered += 1
        answer = answer or first_line(data)
    print(f"{'per-address':12} opened {len(held)} silent connections from one address"
          f"{'; ' + failed if failed else ''}: {len(held) - answered} held, {answered} refused"
          f"{' (first: ' + answer + ')' if answer else ''}")
    for s in held:
        s.close()

    jwt, client = os.environ.get("POOLGATE_JWT"), os.environ.get("POOLGATE_CLIENT_ID")
    if jwt and client:
        s = connect(addr, tls)
        s.sendall((f"GET /api/v2/pools/ws/{client}/ HTTP/1.1\r\nHost: {host}\r\n"
                   "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   f"Origin: https://evil.example\r\nCookie: JWT {jwt}\r\n\r\n").encode())
        s.settimeout(5)
        print(f"{'origin':12} {first_line(s.recv(4096))}")
    else:
        print(f"{'origin':12} skipped (set POOLGATE_JWT and POOLGATE_CLIENT_ID)")

    s = connect(addr, tls)
    s.sendall(f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    s.settimeout(5)
    print(f"{'metrics':12} {first_line(s.recv(4096))}")


if __name__ == "__main__":
    main()
