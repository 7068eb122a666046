#!/usr/bin/env python3
"""A minimal MQTT 3.1.1 subscriber (stdlib only) for the chaos run.

Connects with a persistent session (clean session 0) and a fixed client id, subscribes to one
topic at QoS 1, and appends every payload it receives as one line to OUT (flushed before the
PUBACK, so a record is on disk before the broker may forget it). Reconnects every 100 ms while
the broker is down; the broker keeps the session (and what was queued for it) across its own
restarts when it runs with persistence. Writes READY once its first subscription is granted.
Stops on SIGTERM.

Usage: mqtt_sub.py HOST PORT CLIENT_ID TOPIC OUT READY
"""
import os
import select
import signal
import socket
import struct
import sys
import time

host, port, client_id, topic, out_path, ready_path = sys.argv[1], int(sys.argv[2]), *sys.argv[3:7]
KEEPALIVE = 10
stop = False


def on_term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGINT, on_term)


def s16(b: bytes) -> bytes:
    return struct.pack("!H", len(b)) + b


def packet(first: int, body: bytes) -> bytes:
    n, enc = len(body), bytearray()
    while True:
        d, n = n % 128, n // 128
        enc.append(d | (0x80 if n else 0))
        if not n:
            break
    return bytes([first]) + bytes(enc) + body


class Conn:
    def __init__(self, sock: socket.socket):
        self.sock, self.buf = sock, bytearray()

    def packets(self):
        """Complete packets in the buffer: (first byte, body)."""
        while True:
            if len(self.buf) < 2:
                return
            mult, n, i = 1, 0, 1
            while True:
                if i >= len(self.buf):
                    return
                b = self.buf[i]
                n += (b & 0x7F) * mult
                mult *= 128
                i += 1
                if not b & 0x80:
                    break
            if len(self.buf) < i + n:
                return
            first, body = self.buf[0], bytes(self.buf[i : i + n])
            del self.buf[: i + n]
            yield first, body


def session(out) -> None:
    sock = socket.create_connection((host, port), timeout=2)
    sock.settimeout(None)
    c = Conn(sock)
    # CONNECT: protocol MQTT level 4, flags 0 (persistent session), keep-alive.
    sock.sendall(packet(0x10, s16(b"MQTT") + bytes([4, 0]) + struct.pack("!H", KEEPALIVE) + s16(client_id.encode())))
    last_sent = time.monotonic()
    subscribed = False
    while not stop:
        r, _, _ = select.select([sock], [], [], 1.0)
        if r:
            data = sock.recv(1 << 20)
            if not data:
                raise ConnectionError("closed by the broker")
            c.buf += data
            for first, body in c.packets():
                kind = first >> 4
                if kind == 2:  # CONNACK
                    if body[1] != 0:
                        raise ConnectionError(f"refused: {body[1]}")
                    sock.sendall(packet(0x82, struct.pack("!H", 1) + s16(topic.encode()) + b"\x01"))
                    last_sent = time.monotonic()
                elif kind == 9:  # SUBACK
                    if not subscribed:
                        subscribed = True
                        with open(ready_path, "w") as f:
                            f.write("ready\n")
                elif kind == 3:  # PUBLISH
                    qos = (first >> 1) & 3
                    tlen = struct.unpack("!H", body[:2])[0]
                    pos = 2 + tlen
                    pid = None
                    if qos:
                        pid = body[pos : pos + 2]
                        pos += 2
                    payload = body[pos:]
                    out.write(payload.replace(b"\n", b" ") + b"\n")
                    out.flush()
                    os.fsync(out.fileno())
                    if qos == 1:
                        sock.sendall(packet(0x40, pid))
                    elif qos == 2:
                        sock.sendall(packet(0x50, pid))
                    last_sent = time.monotonic()
                elif kind == 6:  # PUBREL (QoS 2, not expected)
                    sock.sendall(packet(0x70, body[:2]))
        if time.monotonic() - last_sent > KEEPALIVE / 2:
            sock.sendall(b"\xc0\x00")
            last_sent = time.monotonic()
    try:
        sock.sendall(b"\xe0\x00")  # DISCONNECT
    finally:
        sock.close()


def main() -> None:
    with open(out_path, "ab") as out:
        while not stop:
            try:
                session(out)
            except OSError:
                time.sleep(0.1)


main()
