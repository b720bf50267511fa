#!/usr/bin/env python3
"""Writes the seed corpus of the frame fuzz target into fuzz/corpus/frame/.

Each file is a byte stream as one peer would send it on a connection: valid
frames of every message type, several frames back to back, truncations, bad
headers, oversized lengths and malformed bodies. The layouts follow
docs/protocol.md (and src/common/frame.h, proto.h); this script uses only the
standard library.

Seeds written here are named "seed-*"; inputs the fuzzer found and that were
kept are named "found-*" and are left alone. Run it again after a protocol
change: python3 fuzz/make_corpus.py
"""

import os
import struct
import sys

MAGIC = 0x4C4F4853  # "SHOL"
VERSION = 1
HDR = struct.Struct("<IBBHQII")  # magic, version, type, flags, id, len, reserved
MAX_BODY = 1 << 20  # the fuzz target's limit (fuzz/frame_fuzz.c)

T = dict(HELLO=1, HELLO_OK=2, FUNC=3, SUBMIT=4, RESULT=5, PUT=6, RELEASE=7,
         CANCEL=8, CANCEL_REPLY=9, KILL_ACTOR=10, STATUS=11, STATUS_REPLY=12,
         STOP=13, OUTPUT=14, EXEC=15, ERROR=16, PUT_REPLY=17, MAP=18, MAP_REPLY=19,
         AUTH_CHALLENGE=20, AUTH_RESPONSE=21, AUTH_OK=22, NODE_REGISTER=23,
         HEARTBEAT=24, DRAIN=25, DRAIN_REPLY=26, CHUNK=27, NODE_HOLDS=28,
         PULL=32, PULL_REPLY=33, LOCATE=34, HAVE=35, LANE=36)
FIRST_UNKNOWN_TYPE = 37


def frame(typ, body=b"", fid=0, flags=0, version=VERSION, magic=MAGIC,
          reserved=0, length=None):
    n = len(body) if length is None else length
    return HDR.pack(magic, version, typ, flags, fid, n, reserved) + body


def hello(role=1, pid=1234, flags=0):
    return frame(T["HELLO"], struct.pack("<IIII", role, pid, flags, 0))


def hello_ok(client_id=1, node_id=1, workers=2, cpu=2000, gpu=0, mem=1 << 30,
             threshold=65536, capacity=1 << 30, store_dir=b"/dev/shm/shoal-1-abcdef"):
    return frame(T["HELLO_OK"],
                 struct.pack("<IIIIQQQQQI", client_id, node_id, workers, 0, cpu, gpu, mem,
                             threshold, capacity, len(store_dir)) + store_dir)


def submit_body(fn_id=1 << 40 | 1, actor_id=0, kind=0, flags=0, retries=3,
                timeout_ms=0, cpu=1000, gpu=0, mem=0, deps=(), custom=(),
                method=b"", args=b"\x80\x05N.", ndeps=None, ncustom=None,
                method_len=None, args_len=None):
    body = struct.pack(
        "<QQIIIIQQQIIII", fn_id, actor_id, kind, flags, retries, timeout_ms,
        cpu, gpu, mem,
        len(deps) if ndeps is None else ndeps,
        len(custom) if ncustom is None else ncustom,
        len(method) if method_len is None else method_len,
        len(args) if args_len is None else args_len)
    assert len(body) == 72
    body += b"".join(struct.pack("<Q", d) for d in deps)
    for name, milli in custom:
        body += struct.pack("<I", len(name)) + name + struct.pack("<Q", milli)
    return body + method + args


def submit(tid=1 << 40 | 2, **kw):
    return frame(T["SUBMIT"], submit_body(**kw), fid=tid)


def result(tid, status=0, code=0, payload=b"\x80\x05K*."):
    return frame(T["RESULT"], struct.pack("<Ii", status, code) + payload, fid=tid)


def exec_body(fn_id=1, actor_id=0, kind=0, deps=(), method=b"", args=b"\x80\x05).",
              ndeps=None, deps_len=None):
    # A dependency is bytes (inline) or (object id, size) (in the store).
    region = b"".join(struct.pack("<I", len(d)) + d if isinstance(d, bytes)
                      else struct.pack("<IQQ", 0x80000000 | 16, *d) for d in deps)
    body = struct.pack("<QQIIIII", fn_id, actor_id, kind,
                       len(deps) if ndeps is None else ndeps,
                       len(method), len(args),
                       len(region) if deps_len is None else deps_len)
    assert len(body) == 36
    return body + region + method + args


def output(tid, pid=4321, stream=1, data=b"hello from a worker\n"):
    return frame(T["OUTPUT"], struct.pack("<II", pid, stream) + data, fid=tid)


def error(code, text):
    return frame(T["ERROR"], struct.pack("<i", code) + text)


def challenge(nonce=bytes(range(32)), scheme=1):
    return frame(T["AUTH_CHALLENGE"], struct.pack("<II", scheme, 0) + nonce)


def auth_response(cnonce=bytes(range(100, 132)), mac=bytes(range(200, 232))):
    return frame(T["AUTH_RESPONSE"], cnonce + mac)


def auth_ok(mac=bytes(range(50, 82))):
    return frame(T["AUTH_OK"], mac)


def res_body(cpu=2000, gpu=0, mem=1 << 30, custom=(("bigmem", 1000),), ncustom=None):
    body = struct.pack("<QQQI", cpu, gpu, mem, len(custom) if ncustom is None else ncustom)
    for name, amount in custom:
        n = name.encode() if isinstance(name, str) else name
        body += struct.pack("<I", len(n)) + n + struct.pack("<Q", amount)
    return body


def register(node_id=123456, pid=77, workers=2, host=b"node-b", host_len=None, **res):
    body = struct.pack("<IIII", node_id, pid, workers, len(host) if host_len is None else host_len)
    return frame(T["NODE_REGISTER"], body + res_body(**res) + host)


def heartbeat(load=1500, running=2, **res):
    return frame(T["HEARTBEAT"], struct.pack("<II", load, running) + res_body(**res))


def seeds():
    tid = 1 << 40 | 7
    full = submit(tid, kind=2, actor_id=1 << 40 | 3, fn_id=0, flags=1,
                  timeout_ms=5000, gpu=500, mem=1 << 28,
                  deps=(1 << 40 | 4, 1 << 40 | 5),
                  custom=((b"TPU", 2000), (b"x" * 63, 1)),
                  method=b"step", args=b"\x80\x05\x95pickled-args")
    s = {}
    # Valid frames of every type.
    for role in (1, 2, 3):
        s[f"hello-role{role}"] = hello(role=role, flags=1 if role == 1 else 0)
    s["hello-ok"] = hello_ok()
    s["func"] = frame(T["FUNC"], b"\x80\x05\x95cloudpickled-function", fid=1 << 40 | 1)
    s["submit-minimal"] = submit()
    s["submit-full"] = full
    s["submit-actor-create"] = submit(1 << 40 | 3, kind=1, cpu=0)
    s["submit-16-custom"] = submit(custom=tuple((b"r%d" % i, i) for i in range(16)))
    for st in range(9):
        s[f"result-status{st}"] = result(tid, status=st, code=-9 if st == 2 else 0)
    s["put"] = frame(T["PUT"], b"\x80\x05\x95a-value", fid=1 << 40 | 9)
    s["release"] = frame(T["RELEASE"], struct.pack("<QQQ", 1, 2, 3))
    s["cancel-force"] = frame(T["CANCEL"], fid=tid, flags=1)
    s["cancel-reply"] = frame(T["CANCEL_REPLY"], struct.pack("<I", 2), fid=tid)
    s["kill-actor"] = frame(T["KILL_ACTOR"], fid=1 << 40 | 3, flags=1)
    s["status"] = frame(T["STATUS"], fid=5)
    s["status-reply"] = frame(T["STATUS_REPLY"], b"\x82\xa7workers\x04\xa5tasks\x00", fid=5)
    s["stop"] = frame(T["STOP"])
    s["output"] = output(tid)
    s["exec"] = frame(T["EXEC"], exec_body(deps=(b"\x80\x05K\x01.", b"", b"dep")), fid=tid)
    s["exec-stored-dep"] = frame(T["EXEC"], exec_body(deps=(b"\x80\x05K\x01.", (1 << 40 | 7, 1 << 20))),
                                 fid=tid)
    s["result-stored"] = result(tid, status=0, code=1, payload=struct.pack("<Q", 1 << 30))
    s["put-stored"] = frame(T["PUT"], struct.pack("<Q", 4096), fid=1 << 40 | 9, flags=1)
    s["put-reply"] = frame(T["PUT_REPLY"], struct.pack("<I", 9) + b"the object store is full", fid=1 << 40 | 9)
    s["map"] = frame(T["MAP"], fid=1 << 40 | 9)
    s["chunk"] = frame(T["CHUNK"], struct.pack("<QQ", 100, 0) + b"s" * 60, fid=1 << 40 | 9)
    s["node-holds"] = frame(T["NODE_HOLDS"], struct.pack("<IIQQQ", 2, 1, 1 << 40 | 3, 1 << 40 | 4,
                                                         1 << 40 | 2))
    s["node-holds-short"] = frame(T["NODE_HOLDS"], struct.pack("<IIQ", 2, 0, 1 << 40 | 3))
    s["node-holds-held"] = frame(T["NODE_HOLDS"], struct.pack("<IIQQ", 1, 1, 1 << 40 | 3, 1 << 40 | 2)
                                 + res_body())
    s["node-holds-held-short"] = frame(T["NODE_HOLDS"], struct.pack("<IIQ", 0, 1, 1 << 40 | 2)
                                       + res_body()[:20])
    s["hello-resume"] = frame(T["HELLO"], struct.pack("<IIII", 1, 1234, 4, 7))
    s["submit-resent"] = frame(T["SUBMIT"], submit_body(), fid=tid, flags=1)
    s["chunk-short"] = frame(T["CHUNK"], b"\0" * 15, fid=1 << 40 | 9)
    s["pull"] = frame(T["PULL"], fid=1 << 40 | 9)
    s["pull-with-body"] = frame(T["PULL"], b"abc", fid=1 << 40 | 9)
    s["pull-reply-ok"] = frame(T["PULL_REPLY"], struct.pack("<IQ", 0, 20 << 20), fid=1 << 40 | 9)
    s["pull-reply-lost"] = frame(T["PULL_REPLY"], struct.pack("<IQ", 7, 0) + b"gone", fid=1 << 40 | 9)
    s["pull-reply-bad-status"] = frame(T["PULL_REPLY"], struct.pack("<IQ", 10, 0), fid=1 << 40 | 9)
    s["pull-reply-short"] = frame(T["PULL_REPLY"], b"\0" * 11, fid=1 << 40 | 9)
    addr = b"127.0.0.1:41000"
    s["locate"] = frame(T["LOCATE"], struct.pack("<QII", 20 << 20, 4242, len(addr)) + addr,
                        fid=1 << 40 | 9)
    s["locate-node-0"] = frame(T["LOCATE"], struct.pack("<QII", 1, 0, len(addr)) + addr)
    s["locate-long-addr"] = frame(T["LOCATE"], struct.pack("<QII", 1, 3, 80) + b"a" * 80)
    s["locate-trailing"] = frame(T["LOCATE"], struct.pack("<QII", 1, 3, len(addr)) + addr + b"x")
    s["have"] = frame(T["HAVE"], struct.pack("<QQ", 1 << 40 | 9, 1 << 40 | 10))
    s["have-odd"] = frame(T["HAVE"], b"\0" * 12)
    s["lane-lost"] = frame(T["LANE"], struct.pack("<Q", 1 << 40 | 9), fid=3, flags=0x8)
    s["lane-lost-short"] = frame(T["LANE"], b"\0" * 5, fid=3, flags=0x8)
    s["lane-done"] = frame(T["LANE"], struct.pack("<Ii", 0, 0) + b"value", fid=1 << 40 | 9,
                           flags=0x10)
    s["lane-done-stored"] = frame(T["LANE"], struct.pack("<IiQ", 0, 1, 4096), fid=1 << 40 | 9,
                                  flags=0x10)
    s["lane-done-short"] = frame(T["LANE"], b"\0" * 3, fid=1 << 40 | 9, flags=0x10)
    s["lane-end"] = frame(T["LANE"], struct.pack("<Q", 12), fid=3, flags=0x4)
    s["submit-want-lane"] = frame(T["SUBMIT"], submit_body(), fid=tid, flags=2)
    s["register-node-port"] = frame(T["NODE_REGISTER"], register()[24:] + struct.pack("<I", 40123))
    s["register-node-port-0"] = frame(T["NODE_REGISTER"], register()[24:] + struct.pack("<I", 0))
    s["bad-type-gap-28"] = frame(28)
    s["map-reply"] = frame(T["MAP_REPLY"], struct.pack("<IQ", 0, 4096), fid=1 << 40 | 9)
    s["release-unmap"] = frame(T["RELEASE"], struct.pack("<QQ", 1 << 40 | 9, 1 << 40 | 10), flags=1)
    s["status-objects"] = frame(T["STATUS"], fid=5, flags=1)
    s["hello-ok-no-store"] = hello_ok(store_dir=b"")
    s["hello-ok-dir-nul"] = hello_ok(store_dir=b"/dev/shm/a\0b")
    s["exec-actor-call"] = frame(T["EXEC"], exec_body(kind=2, actor_id=3, method=b"m"), fid=tid)
    s["exec-devices"] = frame(T["EXEC"], exec_body() + struct.pack("<Q", 0b101), fid=tid, flags=1)
    s["error"] = error(-1004, b"frame larger than the size limit")
    s["auth-challenge"] = challenge()
    s["auth-response"] = auth_response()
    s["auth-ok"] = auth_ok()
    s["empty"] = b""

    # Several frames in one stream, as a client sends them.
    s["stream-driver"] = (hello() + frame(T["FUNC"], b"fn", fid=1) + submit() +
                          submit(deps=(1 << 40 | 2,)) + frame(T["RELEASE"], struct.pack("<Q", 2)))
    s["stream-results"] = b"".join(result(1 << 40 | i, payload=b"r" * i) for i in range(1, 40))
    s["stream-worker"] = hello(role=2) + b"".join(
        frame(T["EXEC"], exec_body(deps=(b"a",) * (i % 3)), fid=i) for i in range(1, 10))
    s["stream-then-garbage"] = hello() + submit() + b"GARBAGE!" * 4
    # A TCP client's first write (proof and HELLO), and the agent's answers.
    s["stream-tcp-client"] = auth_response() + hello() + submit()
    s["stream-tcp-agent"] = challenge() + auth_ok() + hello_ok()

    # Truncations: the parser must wait, never read past what it has.
    for cut in (1, 3, 4, 10, 23, 24, 25, 60, len(full) - 1):
        s[f"trunc-submit-{cut}"] = full[:cut]
    s["trunc-second-frame"] = hello() + full[:40]

    # Bad headers.
    s["bad-magic-http"] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    s["bad-magic-short"] = b"SHO"  # a prefix: waits
    s["bad-magic-byte"] = b"SHOX" + hello()[4:]
    s["bad-version-0"] = frame(T["HELLO"], b"\0" * 16, version=0)
    s["bad-version-2"] = frame(T["HELLO"], b"\0" * 16, version=2)
    s["bad-type-0"] = frame(0)
    s[f"bad-type-{FIRST_UNKNOWN_TYPE}"] = frame(FIRST_UNKNOWN_TYPE)
    s["bad-type-255"] = frame(255)
    s["bad-reserved"] = frame(T["STATUS"], reserved=1)
    s["huge-len-max"] = frame(T["PUT"], b"x" * 8, length=0xFFFFFFFF)
    s["huge-len-limit-plus-1"] = frame(T["PUT"], length=MAX_BODY + 1)
    s["len-at-limit-partial"] = frame(T["PUT"], b"y" * 100, length=MAX_BODY)

    # Bodies that do not decode for their type.
    s["hello-bad-role"] = frame(T["HELLO"], struct.pack("<IIII", 9, 1, 0, 0))
    s["hello-short"] = frame(T["HELLO"], struct.pack("<III", 1, 1, 0))
    s["hello-ok-long"] = frame(T["HELLO_OK"], b"\0" * 41)
    s["submit-17-custom"] = submit(custom=tuple((b"c%d" % i, i) for i in range(17)))
    s["submit-ncustom-huge"] = submit(ncustom=0xFFFFFFFF)
    s["submit-custom-empty-name"] = submit(custom=((b"", 1),))
    s["submit-custom-name-64"] = submit(custom=((b"n" * 64, 1),))
    s["submit-custom-name-nul"] = submit(custom=((b"a\0b", 1),))
    s["submit-ndeps-overflow"] = submit(ndeps=0x20000000, deps=(1,))
    s["submit-ndeps-max"] = submit(ndeps=0xFFFFFFFF)
    s["submit-method-len-huge"] = submit(method=b"m", method_len=0xFFFFFFFF)
    s["submit-args-len-short"] = submit(args=b"abc", args_len=4)
    s["submit-trailing-byte"] = frame(T["SUBMIT"], submit_body() + b"\0", fid=1)
    s["submit-kind-3"] = submit(kind=3)
    s["result-short"] = frame(T["RESULT"], b"\0" * 7, fid=1)
    s["result-bad-status"] = result(1, status=99)
    s["exec-kind-3"] = frame(T["EXEC"], exec_body(kind=3), fid=1)
    s["exec-devices-short"] = frame(T["EXEC"], b"\x01\x02", fid=1, flags=1)
    s["exec-unknown-flag"] = frame(T["EXEC"], exec_body(), fid=1, flags=2)
    s["exec-deps-len-huge"] = frame(T["EXEC"], exec_body(deps=(b"a",), deps_len=0xFFFFFFF0), fid=1)
    bad_dep = bytearray(exec_body(deps=(b"abc",)))
    bad_dep[36:40] = struct.pack("<I", 0xFFFFFFFF)  # the one dep's length
    s["exec-dep-inner-overflow"] = frame(T["EXEC"], bytes(bad_dep), fid=1)
    s["exec-ndeps-mismatch"] = frame(T["EXEC"], exec_body(deps=(b"a", b"b"), ndeps=5), fid=1)
    s["output-short"] = frame(T["OUTPUT"], b"\1\0\0", fid=1)
    s["error-with-nul"] = error(-1, b"a\0b")
    s["auth-challenge-scheme-0"] = challenge(scheme=0)
    s["auth-challenge-scheme-2"] = challenge(scheme=2)
    s["auth-challenge-short"] = frame(T["AUTH_CHALLENGE"], b"\1\0\0\0" + b"\0" * 35)
    s["auth-response-short"] = frame(T["AUTH_RESPONSE"], b"\0" * 63)
    s["auth-response-long"] = frame(T["AUTH_RESPONSE"], b"\0" * 65)
    s["auth-ok-empty"] = frame(T["AUTH_OK"])
    s["auth-ok-long"] = frame(T["AUTH_OK"], b"\0" * 33)
    # The cluster: a node's handshake after authentication, its heartbeats,
    # and the head's side (empty heartbeat, drain).
    s["node-join"] = (hello(role=4) + register() + heartbeat() + heartbeat(custom=()) +
                      result(1 << 40 | 2, code=2, payload=b"SHOB" + b"\0" * 60))
    s["node-register-no-custom"] = register(custom=())
    s["head-heartbeat-empty"] = frame(T["HEARTBEAT"])
    s["drain"] = frame(T["DRAIN"], fid=123456)
    s["drain-reply"] = frame(T["DRAIN_REPLY"], struct.pack("<I", 0) + b"node 5 is draining", fid=5)
    s["register-node-id-0"] = register(node_id=0)
    s["register-host-len-huge"] = register(host_len=0xFFFFFFFF)
    s["register-host-256"] = register(host=b"h" * 256)
    s["register-host-nul"] = register(host=b"a\0b")
    s["register-too-many-custom"] = register(ncustom=17)
    s["register-empty-name"] = register(custom=((b"", 1),))
    s["register-dup-name"] = register(custom=(("x", 1), ("x", 2)))
    s["register-trailing-byte"] = frame(T["NODE_REGISTER"], register().__getitem__(slice(24, None)) + b"\0")
    s["heartbeat-short"] = frame(T["HEARTBEAT"], b"\0" * 35)
    s["heartbeat-name-len-huge"] = heartbeat(custom=((b"ab", 1),))[:24 + 8 + 28] + b"\xff\xff\xff\xff"
    return s


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "frame")
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(out):
        if name.startswith("seed-"):
            os.remove(os.path.join(out, name))
    s = seeds()
    for name, data in s.items():
        with open(os.path.join(out, f"seed-{name}"), "wb") as f:
            f.write(data)
    print(f"wrote {len(s)} seeds to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
