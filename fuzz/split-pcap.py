#!/usr/bin/env python3
"""Splits a loopback pcap of kvnode <-> OTP traffic into per-message fuzz seeds.

Usage: split-pcap.py CAPTURE.pcap CORPUS_DIR --epmd-port P --dist-port D [--dist-port D2 ...]

Writes (replacing what was there):
  CORPUS_DIR/epmd_request/<request>-<sha>   one EPMD request each: u16 length + body
  CORPUS_DIR/handshake/<side>-<sha>         mode byte + one side's handshake bytes:
      mode 0 + an initiator's bytes (send_name, challenge_reply): input for `accept`
      mode 1 + an acceptor's bytes (status, challenge, challenge_ack): input for `connect`
  CORPUS_DIR/frame/op<N>-<sha>              one distribution frame body (after the u32
                                            length; ticks skipped), named by control op
Duplicates (same bytes) are written once, and at most MAX_PER_KIND seeds per kind. Only the standard library is used.
"""
import argparse
import hashlib
import os
import shutil
import struct
import sys

MAX_PER_KIND = 6
EPMD_NAMES = {120: "alive2_req", 122: "port_please2_req", 110: "names_req",
              100: "dump_req", 107: "kill_req", 115: "stop_req"}


def read_pcap(path):
    with open(path, "rb") as f:
        data = f.read()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        sys.exit(f"{path}: not a pcap file")
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    pos = 24
    while pos + 16 <= len(data):
        _, _, incl, _ = struct.unpack(endian + "IIII", data[pos:pos + 16])
        pos += 16
        yield linktype, data[pos:pos + incl]
        pos += incl


def tcp_segments(path):
    """Yields (src, sport, dst, dport, seq, flags, payload) of IPv4 TCP packets."""
    for linktype, pkt in read_pcap(path):
        if linktype == 1:  # Ethernet (what tcpdump -i lo records)
            if struct.unpack("!H", pkt[12:14])[0] != 0x0800:
                continue
            ip = pkt[14:]
        elif linktype == 113:  # Linux cooked capture
            if struct.unpack("!H", pkt[14:16])[0] != 0x0800:
                continue
            ip = pkt[16:]
        else:
            sys.exit(f"unsupported link type {linktype}")
        if ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        ihl = (ip[0] & 15) * 4
        total = struct.unpack("!H", ip[2:4])[0]
        tcp = ip[ihl:total]
        sport, dport, seq = struct.unpack("!HHI", tcp[:8])
        off = (tcp[12] >> 4) * 4
        yield ip[12:16], sport, ip[16:20], dport, seq, tcp[13], tcp[off:]


def streams(path):
    """Reassembles each direction of each connection: {(sport, dport, conn#): bytes}."""
    isn, chunks, order = {}, {}, []
    for src, sport, dst, dport, seq, flags, payload in tcp_segments(path):
        key = (src, sport, dst, dport)
        if flags & 0x02:  # SYN: a new connection on this 4-tuple
            isn[key] = (seq + 1) & 0xFFFFFFFF
            chunks[key] = {}
            order.append(key)
            continue
        if key not in isn or not payload:
            continue
        chunks[key].setdefault((seq - isn[key]) & 0xFFFFFFFF, payload)
    out = {}
    for key in order:
        data = bytearray()
        for off in sorted(chunks[key]):
            seg = chunks[key][off]
            if off > len(data):
                break  # a hole (lost packet): keep what is contiguous
            data += seg[len(data) - off:]
        out[key] = bytes(data)
    return order, out


def handshake_prefix(data, initiator):
    """Length of the handshake part of one direction (u16-length messages)."""
    pos = 0
    while pos + 2 <= len(data):
        n = struct.unpack("!H", data[pos:pos + 2])[0]
        if n == 0 or pos + 2 + n > len(data):
            break
        tag = data[pos + 2:pos + 3]
        pos += 2 + n
        if initiator and tag == b"r":
            break  # challenge_reply: the initiator's last handshake message
        if not initiator and tag == b"a":
            break  # challenge_ack: the acceptor's last handshake message
        if not initiator and tag == b"s" and data[pos - n + 1:pos] not in (b"ok", b"ok_simultaneous"):
            break  # nok / not_allowed / alive ends the acceptor's part
    return pos


def frames(data):
    pos = 0
    while pos + 4 <= len(data):
        n = struct.unpack("!I", data[pos:pos + 4])[0]
        if pos + 4 + n > len(data):
            break
        if n:
            yield data[pos + 4:pos + 4 + n]
        pos += 4 + n


def frame_name(body):
    # 112 (pass-through), 131, SMALL_TUPLE_EXT arity, SMALL_INTEGER_EXT op
    if len(body) > 5 and body[:3] == b"\x70\x83\x68" and body[4] == 97:
        return f"op{body[5]}"
    return "frame"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pcap")
    ap.add_argument("corpus")
    ap.add_argument("--epmd-port", type=int, required=True)
    ap.add_argument("--dist-port", type=int, action="append", required=True)
    args = ap.parse_args()

    seeds = {"epmd_request": {}, "handshake": {}, "frame": {}}

    per_name = {}

    def add(target, name, data):
        # At most MAX_PER_KIND distinct seeds per kind (e.g. control op): a small corpus.
        if data in seeds[target] or per_name.get((target, name), 0) >= MAX_PER_KIND:
            return
        per_name[(target, name)] = per_name.get((target, name), 0) + 1
        sha = hashlib.sha1(data).hexdigest()[:10]
        seeds[target][data] = f"{name}-{sha}"

    order, data = streams(args.pcap)
    for key in order:
        _, sport, _, dport = key
        stream = data[key]
        if dport == args.epmd_port and stream:
            n = struct.unpack("!H", stream[:2])[0] if len(stream) >= 2 else 0
            request = stream[:2 + n]
            tag = request[2] if len(request) > 2 else None
            add("epmd_request", EPMD_NAMES.get(tag, "request"), request)
        elif dport in args.dist_port or sport in args.dist_port:
            initiator = dport in args.dist_port
            hs = handshake_prefix(stream, initiator)
            if hs:
                mode = b"\x00" if initiator else b"\x01"
                add("handshake", "initiator" if initiator else "acceptor", mode + stream[:hs])
            for body in frames(stream[hs:]):
                # Only pass-through frames: kvnode never negotiates the atom cache, so it never
                # receives the distribution-header frames two OTP nodes exchange.
                if body[:1] == b"\x70":
                    add("frame", frame_name(body), body)

    for target, found in seeds.items():
        out = os.path.join(args.corpus, target)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        for content, name in found.items():
            with open(os.path.join(out, name), "wb") as f:
                f.write(content)
        print(f"{target}: {len(found)} seeds")


if __name__ == "__main__":
    main()
