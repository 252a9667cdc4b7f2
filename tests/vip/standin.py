#!/usr/bin/env python3
"""Stand-ins used by vip-failover.sh when the project's binaries are unavailable, so that
the keepalived + haproxy topology is still exercised.

  standin.py serve --name cloudN --port 10000
      banner "<name>\n" on every connection, then echo.
  standin.py edge --host VIP --port 10010 [--max-seconds 120]
      a long-lived client shaped like edgehub: connect, read the banner, then a
      ping every 100 ms that must be echoed within 300 ms; on any failure it logs
      "lost" and reconnects at once. One stderr line per transition:
      "connecting", "connected to <name>", "lost: <why>".
"""
import argparse, socket, sys, time


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def serve(a):
    import socketserver

    class H(socketserver.BaseRequestHandler):
        def handle(self):
            s = self.request
            s.settimeout(60)
            try:
                s.sendall(f"{a.name}\n".encode())
                while True:
                    d = s.recv(4096)
                    if not d:
                        break
                    s.sendall(d)
            except OSError:
                pass

    class S(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    with S(("0.0.0.0", a.port), H) as srv:
        log(f"{a.name}: listening on {a.port}")
        srv.serve_forever()


def readline(s, timeout):
    s.settimeout(timeout)
    buf = b""
    while not buf.endswith(b"\n"):
        d = s.recv(256)
        if not d:
            raise ConnectionError("eof")
        buf += d
    return buf.decode().strip()


def edge(a):
    end = time.time() + a.max_seconds
    while time.time() < end:
        log("connecting")
        try:
            s = socket.create_connection((a.host, a.port), timeout=0.3)
            who = readline(s, 0.5)
        except OSError as e:
            log(f"connect failed: {e}")
            time.sleep(0.1)
            continue
        log(f"connected to {who}")
        try:
            n = 0
            while time.time() < end:
                n += 1
                s.sendall(f"ping {n}\n".encode())
                if readline(s, 0.3) != f"ping {n}":
                    raise ConnectionError("bad echo")
                time.sleep(0.1)
        except (OSError, ConnectionError) as e:
            log(f"lost: {e}")
        finally:
            s.close()


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, default=10000)
    p.add_argument("--tag", help="ignored; marks the command line for the test's pid checks")
    p = sub.add_parser("edge")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=10010)
    p.add_argument("--max-seconds", type=float, default=120)
    p.add_argument("--tag", help="ignored; marks the command line for the test's pid checks")
    a = ap.parse_args()
    serve(a) if a.cmd == "serve" else edge(a)


if __name__ == "__main__":
    main()
