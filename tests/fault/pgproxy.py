#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""pgproxy.py - a fault-injecting TCP proxy for PostgreSQL, on loopback only.

It sits between a client and one PostgreSQL server and, on command, misbehaves the way networks
and middleboxes do:

  pass             forward both ways (the default)
  blackhole        stop forwarding both ways but keep every socket open (a silent partition);
                   new connections are accepted and held. `pass` heals it: what was held flows.
  reset            reset (RST) every open connection now and every new one at accept
  delay MS         hold every chunk MS milliseconds before forwarding it (0: off)
  drop_commit N    the next N COMMITs reach the server, but from the answer to each on, nothing
                   more comes back on that connection (the socket stays open); -1: every COMMIT
  cancel_hang on   a CancelRequest (the 16-byte packet on a new connection) is read and then
                   never forwarded nor answered, the socket kept open; `off` forwards new ones
                   again and closes the sockets of those held
  kill_after MS    reset each new connection MS milliseconds after accept (0: off)
  stats            one line of JSON counters
  quit             exit

The control channel is a TCP port on 127.0.0.1: one command per line, one answer line ("ok",
"ok {json}" or "error ..."). At start the proxy prints "pgproxy LISTEN_PORT CONTROL_PORT" on
stdout (both chosen by the kernel unless given) and flushes, so a test reads its ports from there.

Enough of the protocol is parsed to recognise a COMMIT going out (a simple Query or a Parse whose
text is COMMIT) and the server's answer to it (CommandComplete/ErrorResponse), a CancelRequest,
and the client's Sync messages (counted: the server answers each with a ReadyForQuery); an SSL
or GSS answer 'S'/'G' turns parsing off for that connection (it is opaque).
"""
import argparse
import asyncio
import json
import os
import socket
import struct
import sys

SSL_REQUEST = 80877103
GSS_REQUEST = 80877104
CANCEL_REQUEST = 80877102


class Proxy:
    def __init__(self, upstream_host, upstream_port):
        self.up = (upstream_host, upstream_port)
        self.mode = "pass"
        self.delay_ms = 0
        self.drop_commits = 0
        self.cancel_hang = False
        self.kill_after_ms = 0
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.quit = asyncio.Event()
        self.conns = set()
        self.hung = set()  # writers of the cancel requests being held
        self.st = {
            "accepted": 0,
            "active": 0,
            "resets": 0,
            "killed": 0,
            "cancels_seen": 0,
            "cancels_swallowed": 0,
            "commits_seen": 0,
            "syncs_seen": 0,
            "commit_answers_dropped": 0,
            "bytes_up": 0,
            "bytes_down": 0,
        }

    # --- control -----------------------------------------------------------------------------

    def command(self, line):
        words = line.split()
        if not words:
            return "error empty command"
        cmd, args = words[0], words[1:]
        try:
            if cmd in ("pass", "blackhole", "reset") and not args:
                self.mode = cmd
                if cmd == "blackhole":
                    self.flowing.clear()
                else:
                    self.flowing.set()
                if cmd == "reset":
                    for c in list(self.conns):
                        c.reset()
                return "ok"
            if cmd == "delay" and len(args) == 1:
                self.delay_ms = max(0, int(args[0]))
                return "ok"
            if cmd == "drop_commit" and len(args) == 1:
                self.drop_commits = int(args[0])
                return "ok"
            if cmd == "cancel_hang" and len(args) == 1 and args[0] in ("on", "off"):
                self.cancel_hang = args[0] == "on"
                if not self.cancel_hang:
                    # The cancels held so far are let go: their sockets close (unanswered).
                    for w in list(self.hung):
                        w.close()
                    self.hung.clear()
                return "ok"
            if cmd == "kill_after" and len(args) == 1:
                self.kill_after_ms = max(0, int(args[0]))
                return "ok"
            if cmd == "stats" and not args:
                st = dict(self.st)
                st["mode"] = self.mode
                return "ok " + json.dumps(st, separators=(",", ":"))
            if cmd == "quit" and not args:
                self.quit.set()
                return "ok"
        except ValueError:
            pass
        return "error bad command: " + line.strip()

    async def on_control(self, reader, writer):
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                writer.write((self.command(line.decode(errors="replace")) + "\n").encode())
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    # --- connections -------------------------------------------------------------------------

    async def on_client(self, creader, cwriter):
        self.st["accepted"] += 1
        conn = Conn(self, creader, cwriter)
        self.conns.add(conn)
        self.st["active"] += 1
        try:
            await conn.run()
        finally:
            self.conns.discard(conn)
            self.st["active"] -= 1


def rst_close(writer):
    """Closes with an RST rather than a FIN: SO_LINGER with a zero timeout."""
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort() if hasattr(writer.transport, "abort") else writer.close()


class Conn:
    def __init__(self, proxy, creader, cwriter):
        self.p = proxy
        self.cr, self.cw = creader, cwriter
        self.sr = self.sw = None
        self.dead = False
        self.tasks = []
        # Protocol tracking.
        self.parse = True
        self.cbuf = b""  # client bytes not yet framed
        self.sbuf = b""  # server bytes not yet framed
        self.startup = True  # the client's next packet has no type byte
        self.one_byte_answers = 0  # SSL/GSS requests awaiting their 1-byte answer
        self.commit_armed = 0  # COMMITs sent whose answer is to be swallowed
        self.swallowing = False  # nothing more goes to the client

    def reset(self):
        if self.dead:
            return
        self.dead = True
        self.p.st["resets"] += 1
        rst_close(self.cw)
        if self.sw is not None:
            rst_close(self.sw)
        for t in self.tasks:
            t.cancel()

    async def run(self):
        p = self.p
        if p.mode == "reset":
            self.reset()
            return
        if p.kill_after_ms > 0:
            asyncio.get_running_loop().call_later(p.kill_after_ms / 1000.0, self.kill)
        # The first packet decides whether this is a cancel request.
        try:
            head = await self.cr.readexactly(8)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            self.cw.close()
            return
        length, code = struct.unpack("!ii", head)
        first = head
        if code == CANCEL_REQUEST and length == 16:
            p.st["cancels_seen"] += 1
            try:
                first += await self.cr.readexactly(8)
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                self.cw.close()
                return
            if p.cancel_hang:
                p.st["cancels_swallowed"] += 1
                # Read (and ignore) until the client gives up or `cancel_hang off`; never answer.
                p.hung.add(self.cw)
                try:
                    while await self.cr.read(4096):
                        pass
                except (ConnectionError, OSError):
                    pass
                p.hung.discard(self.cw)
                self.cw.close()
                return
        try:
            self.sr, self.sw = await asyncio.open_connection(*p.up)
        except OSError:
            rst_close(self.cw)
            return
        if self.dead:
            rst_close(self.sw)
            return
        # The 8 bytes already read go through the same path as the rest.
        self.on_client_bytes(first)
        self.tasks = [
            asyncio.ensure_future(self.pump(self.cr, self.sw, True, first)),
            asyncio.ensure_future(self.pump(self.sr, self.cw, False, b"")),
        ]
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for w in (self.cw, self.sw):
            try:
                w.close()
            except Exception:
                pass

    def kill(self):
        if not self.dead:
            self.p.st["killed"] += 1
            self.reset()

    # Client -> server framing: notices COMMITs and cancel/SSL requests.
    def on_client_bytes(self, data):
        if not self.parse:
            return
        self.cbuf += data
        while True:
            if self.startup:
                if len(self.cbuf) < 8:
                    return
                length, code = struct.unpack("!ii", self.cbuf[:8])
                if len(self.cbuf) < length:
                    return
                self.cbuf = self.cbuf[length:]
                if code in (SSL_REQUEST, GSS_REQUEST):
                    self.one_byte_answers += 1
                else:
                    self.startup = False
                continue
            if len(self.cbuf) < 5:
                return
            kind = self.cbuf[0:1]
            (length,) = struct.unpack("!i", self.cbuf[1:5])
            if len(self.cbuf) < 1 + length:
                return
            body = self.cbuf[5 : 1 + length]
            self.cbuf = self.cbuf[1 + length :]
            text = None
            if kind == b"S":
                self.p.st["syncs_seen"] += 1
            if kind == b"Q":
                text = body
            elif kind == b"P":
                text = body[body.index(b"\0") + 1 :] if b"\0" in body else b""
            if text is not None:
                stmts = text.split(b"\0", 1)[0].upper().split(b";")
                if any(x.strip() in (b"COMMIT", b"END", b"COMMIT WORK") for x in stmts):
                    self.p.st["commits_seen"] += 1
                    if self.p.drop_commits != 0:
                        if self.p.drop_commits > 0:
                            self.p.drop_commits -= 1
                        self.commit_armed += 1

    # Server -> client framing: returns how many bytes of data may go to the client.
    def on_server_bytes(self, data):
        if self.swallowing:
            return 0
        if not self.parse:
            return len(data)
        start = len(self.sbuf)
        self.sbuf += data
        pos = 0
        while True:
            if self.one_byte_answers > 0:
                if len(self.sbuf) - pos < 1:
                    break
                answer = self.sbuf[pos : pos + 1]
                pos += 1
                self.one_byte_answers -= 1
                if answer in (b"S", b"G"):
                    self.parse = False
                    self.sbuf = b""
                    return len(data)
                continue
            if len(self.sbuf) - pos < 5:
                break
            kind = self.sbuf[pos : pos + 1]
            (length,) = struct.unpack("!i", self.sbuf[pos + 1 : pos + 5])
            if len(self.sbuf) - pos < 1 + length:
                break
            if self.commit_armed > 0 and kind in (b"C", b"E"):
                tag = self.sbuf[pos + 5 : pos + 1 + length]
                if kind == b"E" or tag.startswith(b"COMMIT") or tag.startswith(b"ROLLBACK"):
                    # From this message on, the client hears nothing more.
                    self.swallowing = True
                    self.p.st["commit_answers_dropped"] += 1
                    self.sbuf = b""
                    return max(0, pos - start)
            pos += 1 + length
        self.sbuf = self.sbuf[pos:]
        return len(data)

    async def pump(self, reader, writer, upstream, already):
        p = self.p
        loop = asyncio.get_running_loop()
        queue = asyncio.Queue()

        async def send():
            while True:
                due, data = await queue.get()
                if data is None:
                    return
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await p.flowing.wait()
                if self.dead:
                    return
                if upstream:
                    p.st["bytes_up"] += len(data)
                else:
                    p.st["bytes_down"] += len(data)
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(send())
        if already:
            queue.put_nowait((loop.time() + p.delay_ms / 1000.0, already))
        try:
            while not self.dead:
                await p.flowing.wait()
                data = await reader.read(65536)
                if not data:
                    break
                if upstream:
                    self.on_client_bytes(data)
                else:
                    n = self.on_server_bytes(data)
                    data = data[:n]
                    if not data:
                        continue
                queue.put_nowait((loop.time() + p.delay_ms / 1000.0, data))
        except (ConnectionError, OSError):
            pass
        finally:
            queue.put_nowait((0, None))
            try:
                await sender
            except (ConnectionError, OSError, asyncio.CancelledError):
                pass
            # Half-close: the other side learns of the end as it would without the proxy.
            if not self.dead:
                try:
                    if writer.can_write_eof():
                        writer.write_eof()
                except (OSError, RuntimeError):
                    pass


async def main():
    ap = argparse.ArgumentParser(description="fault-injecting PostgreSQL proxy (loopback)")
    ap.add_argument("--upstream-port", type=int, required=True)
    ap.add_argument("--upstream-host", default="127.0.0.1")
    ap.add_argument("--listen-port", type=int, default=0)
    ap.add_argument("--control-port", type=int, default=0)
    ap.add_argument("--stay", action="store_true", help="do not exit when stdin closes")
    a = ap.parse_args()
    proxy = Proxy(a.upstream_host, a.upstream_port)
    srv = await asyncio.start_server(proxy.on_client, "127.0.0.1", a.listen_port)
    ctl = await asyncio.start_server(proxy.on_control, "127.0.0.1", a.control_port)
    lport = srv.sockets[0].getsockname()[1]
    cport = ctl.sockets[0].getsockname()[1]
    print("pgproxy %d %d" % (lport, cport), flush=True)
    # The proxy ends with its parent: stdin closes when the test exits, however it exits.
    if not a.stay:
        loop = asyncio.get_running_loop()
        fd = sys.stdin.fileno()
        loop.add_reader(fd, lambda: proxy.quit.set() if not os.read(fd, 4096) else None)
    await proxy.quit.wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except (KeyboardInterrupt, SystemExit):
        pass
