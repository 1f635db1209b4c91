"""Media benchmarks: how many calls in the greeting and how many bridged calls one core carries, what
in-band detection in the greeting costs, and where the floor of a Python relay lies.

Run from the repository root, under the benchmark lock (``flock /tmp/durchwahl-bench.lock …``)::

    .venv/bin/python bench/bench_media.py [--ladder 100,200,300,400,500,600,800,1000] [--seconds 10]
        [--loops asyncio,uvloop] [--detectors bank,off] [--greeting speech|example] [--profile N]
        [--skip-calls] [--skip-detector]
    .venv/bin/python bench/bench_media.py --mode relay [--ladder 50,100,200,300,400,600,800,1000]
        [--seconds 10] [--loops asyncio,uvloop] [--profile N [--profile-out FILE]]
    .venv/bin/python bench/bench_media.py --mode floor [--ladder …] [--seconds 10]

**Calls in the greeting.** Each call is one :class:`media.session.RtpSession` (its own UDP socket on
127.0.0.1) that plays the greeting (``--greeting speech``: 10 s of synthetic speech; ``example``:
``examples/greeting.wav``, a chime) looped, PCMU, on the shared :class:`media.session.MediaClock`, and
listens for digits as the greeting's collection does: RFC 4733 and, with ``--detectors bank``, in-band
detection in the clock's :class:`media.dtmf_greeting.DetectorBank` (the echo of what the session sent
removed). It receives a 50 packet/s PCMU stream: the echo of the greeting it sends (6 dB down, 40 ms late),
and every 5 s one digit as RFC 4733 events and one as in-band tones over that echo (so both detectors'
digit paths run, and the digit count checks that they still work under load). The measured server runs in
its own process pinned to CPU 0. The load generator runs in two other processes pinned to CPU 1: a sender
and a sink sharing one socket (so symmetric-RTP latching sends the greeting to the sink). The sink takes
each packet's kernel receive time (``SO_TIMESTAMPNS``, so its own scheduling delay does not count) and
measures **pacing jitter**: per call, how much later than a perfect 20 ms grid (fitted to that call's
earliest packet) each packet arrived; p50/p99/max over every packet of every call. **Lost**: frames
missing from the sequence at the sink (including frames the pacer skipped after a stall); **late**:
packets more than 20 ms behind the grid; **in lost**: inbound packets the server never received. The
ladder stops at the first step with a lost or late packet or p99 > 5 ms.

**Bridged calls** (``--mode relay``). Most of an anchored call's life: two sessions per call (the caller's leg
and the callee's), set up as the B2BUA does (``AnchoredMedia`` of ``routing.calls.media_anchor``: the caller's
SDP offer answered, the callee offered a port, its answer bridged by ``bridge_callee``: a ``MediaBridge``,
PCMU and telephone-event 101 both ways, nobody listening for digits). The load generator (CPU 1) sends 50 pps
PCMU into both legs of every call, from a caller socket to every A leg and from a callee socket to every B leg
(latching points each leg at its socket), each stream at its own phase (1 ms slots); each packet's payload
starts with its send time (``time.time_ns``), its call and its direction. Two sinks, one per direction, take
the relayed packets' kernel receive times and measure **relay latency** (receive minus send time: the server's
queueing and work plus loopback), p50/p99/max over every packet after the warm-up; **lost**: packets sent and
never relayed; **gaps**: holes in each relayed stream's sequence numbers. The server's CPU (and the kernel's
share of it) is given per step and per relayed packet. The ladder stops at the first step with a loss, a gap
or p99 > 5 ms. ``--mode floor`` runs the same load through a bare relay loop (``_floor_server``): the least
any Python relay pays per packet.

**Detector.** CPU per channel-hour of in-band detection in the greeting (the greeting's echo coming back):
one stream fed frame by frame (``InbandDetector`` alone, and ``GreetingDetector`` with the echo canceller),
against ``DetectorBank`` with 100, 500 and 1,000 streams per tick.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import multiprocessing
import os
import platform
import resource
import socket
import statistics
import struct
import sys
import time
import timeit
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "media")]

from dtmf_synth import speech_like  # noqa: E402

from durchwahl.media.dtmf_greeting import DetectorBank, GreetingDetector  # noqa: E402
from durchwahl.media.dtmf_inband import InbandDetector  # noqa: E402
from durchwahl.media.dtmf_rfc4733 import TelephoneEventSender  # noqa: E402
from durchwahl.media.dtmf_tones import dtmf_tone  # noqa: E402
from durchwahl.media.g711 import ulaw_decode, ulaw_encode  # noqa: E402
from durchwahl.media.greeting import Greeting, GreetingCache, greeting_from_samples  # noqa: E402
from durchwahl.media.session import MediaClock, PortAllocator, RtpSession  # noqa: E402
from durchwahl.routing.server import event_loop_factory  # noqa: E402

GREETING = ROOT / "examples" / "greeting.wav"
ECHO_FRAMES = 2  # the caller's line returns the greeting 40 ms late …
ECHO_GAIN = 0.5  # … and 6 dB down
HOST = "127.0.0.1"
SERVER_CPU = 0
LOADGEN_CPU = 1
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_HEADER = struct.Struct("!BBHII")
CYCLE_FRAMES = 250  # 5 s: one RFC 4733 digit and one in-band digit per cycle
EVENT_FRAME = 100
TONE_FRAME = 200


def _pin(cpu: int) -> bool:
    try:
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError, ValueError):
        return False
    return True


# ------------------------------------------------------------------------------------ load generator


def load_greeting(kind: str) -> Greeting:
    """The greeting the calls play: ``example`` (examples/greeting.wav, a 3 s chime of pure tones) or
    ``speech`` (10 s of synthetic speech at -12 dBm0, tests/media/dtmf_synth.py, the same every run)."""
    if kind == "example":
        return GreetingCache().get(GREETING)
    samples = speech_like(np.random.default_rng(1), 10.0, level_dbm0=-12.0)
    return greeting_from_samples(np.round(samples).astype(np.int16), source="synthetic speech")


def _tone_frames() -> list[np.ndarray]:
    """The caller's key '7': five 20 ms frames (100 ms) of its tone pair at -10 dBm0 per tone."""
    tone = dtmf_tone("7", 5 * 160)
    return [tone[i * 160 : (i + 1) * 160] for i in range(5)]


def _sender(
    sock: socket.socket,
    ports: list[int],
    seconds: float,
    start: float,
    greeting_kind: str,
    played_from: float,
    conn: Connection,
) -> None:
    """Send each port a 50 packet/s PCMU stream (in four groups 5 ms apart) for ``seconds``: the echo of
    the greeting the server plays to it (started at ``played_from``, monotonic clock), and once every 5 s
    cycle the digit '5' as RFC 4733 events and the digit '7' as in-band tones."""
    _pin(LOADGEN_CPU)
    greeting = load_greeting(greeting_kind)
    echo = [ECHO_GAIN * ulaw_decode(frame).astype(np.float64) for frame in greeting.pcmu]
    echo_payloads = [ulaw_encode(np.round(frame).astype(np.int16)) for frame in echo]
    tones = _tone_frames()
    events: dict[int, list[tuple[bool, bytes]]] = {}  # cycle frame → (marker, payload) of the '5'
    for p in TelephoneEventSender().packets("5"):
        events.setdefault(EVENT_FRAME + p.send_time // 160, []).append((p.marker, p.payload))
    # Calls press their keys at different moments: each port's 5 s cycle starts at its own offset.
    offsets = {port: (i * CYCLE_FRAMES) // len(ports) for i, port in enumerate(ports)}
    groups = [ports[g::4] for g in range(4)]
    pack = _HEADER.pack
    sendto = sock.sendto
    total = int(seconds / 0.02)
    max_lag = 0.0
    sent = digits = 0
    first_heard = round((start - played_from) / 0.02) - ECHO_FRAMES
    for n in range(total):
        ts = n * 160
        for g, group in enumerate(groups):
            due = start + n * 0.02 + g * 0.005
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                max_lag = max(max_lag, -delay)
            # The greeting frame the server sent ECHO_FRAMES ticks before now: a fixed delay, as a line's.
            heard = first_heard + n
            k = heard % len(echo) if heard >= 0 else -1
            for port in group:
                cycle = (n + offsets[port]) % CYCLE_FRAMES
                if TONE_FRAME <= cycle < TONE_FRAME + len(tones):
                    frame = tones[cycle - TONE_FRAME] + (echo[k] if k >= 0 else 0.0)
                    payload = ulaw_encode(np.clip(np.round(frame), -32768, 32767).astype(np.int16))
                else:
                    payload = echo_payloads[k] if k >= 0 else b"\xff" * 160
                address = (HOST, port)
                seq = n * 4  # room for the event packets in between
                sendto(pack(0x80, 0, seq & 0xFFFF, ts & 0xFFFFFFFF, port) + payload, address)
                extra = events.get(cycle, ())
                for j, (marker, body) in enumerate(extra):
                    event_ts = (ts - 160 * (cycle - EVENT_FRAME)) & 0xFFFFFFFF  # the event's start
                    header = pack(0x80, 101 | (0x80 if marker else 0), (seq + 1 + j) & 0xFFFF, event_ts, port)
                    sendto(header + body, address)
                sent += 1 + len(extra)
                if cycle == TONE_FRAME + 10:
                    digits += 2  # the RFC 4733 '5' and the in-band '7' are both over by now
    conn.send({"sent": sent, "digits": digits, "max_lag_ms": max_lag * 1e3})


def _sink(sock: socket.socket, seconds: float, warmup: float, conn: Connection) -> None:
    """Receive the greeting packets with kernel timestamps; report pacing jitter and losses.

    The sink drains its socket every millisecond (``MSG_DONTWAIT``: the socket is shared with the sender,
    whose sends must stay blocking) instead of blocking in ``recvmsg``: a blocked reader makes every
    ``sendto`` of the server wake it, an inter-processor wake-up charged to the server that a far end on
    another machine does not cost (the same as the relay's sinks)."""
    _pin(LOADGEN_CPU)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    ssrcs: list[int] = []
    stamps: list[int] = []
    times: list[int] = []
    unpack = struct.Struct("!II").unpack_from
    tspec = struct.Struct("qq").unpack_from
    end = time.monotonic() + seconds + 1.0
    recvmsg = sock.recvmsg
    while time.monotonic() < end:
        try:
            data, ancillary, _, _ = recvmsg(2048, 64, socket.MSG_DONTWAIT)
        except BlockingIOError:
            time.sleep(0.001)
            continue
        ts, ssrc = unpack(data, 4)
        ssrcs.append(ssrc)
        stamps.append(ts)
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = tspec(value)
                times.append(sec * 1_000_000_000 + nsec)
                break
        else:
            times.append(time.time_ns())
    conn.send(_jitter(np.array(ssrcs), np.array(stamps), np.array(times), warmup))


def _jitter(ssrc: np.ndarray, stamp: np.ndarray, t_ns: np.ndarray, warmup: float) -> dict[str, Any]:
    if ssrc.size == 0:
        return {"calls": 0, "packets": 0, "lost": 0, "late": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    keep = t_ns >= t_ns.min() + int(warmup * 1e9)
    ssrc, stamp, t = ssrc[keep], stamp[keep].astype(np.int64), t_ns[keep].astype(np.float64) / 1e9
    order = np.lexsort((t, ssrc))
    ssrc, stamp, t = ssrc[order], stamp[order], t[order]
    starts = np.flatnonzero(np.r_[True, ssrc[1:] != ssrc[:-1]])
    group = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, ssrc.size]))
    delta = (stamp - stamp[starts][group]) & 0xFFFFFFFF
    delta = np.where(delta >= 1 << 31, delta - (1 << 32), delta)
    index = delta / 160.0
    lateness = t - index * 0.020
    baseline = np.minimum.reduceat(lateness, starts)
    jitter = (lateness - baseline[group]) * 1e3
    spans = np.maximum.reduceat(index, starts) - np.minimum.reduceat(index, starts) + 1
    received = np.array(
        [np.unique(index[a:b]).size for a, b in zip(starts, np.r_[starts[1:], ssrc.size], strict=True)]
    )
    return {
        "calls": int(starts.size),
        "packets": int(ssrc.size),
        "lost": int((spans - received).sum()),
        "late": int((jitter > 20.0).sum()),
        "p50": float(np.percentile(jitter, 50)),
        "p99": float(np.percentile(jitter, 99)),
        "max": float(jitter.max()),
    }


# ------------------------------------------------------------------------------------------ server


def _server(
    calls: int,
    loop_kind: str,
    detector: str,
    greeting_kind: str,
    profile: bool,
    sink: tuple[str, int],
    conn: Connection,
) -> None:
    """The measured process: ``calls`` sessions playing the greeting and listening for digits, as a call
    in the greeting does (``bank``: in-band detection in the media clock's DetectorBank, the echo of
    what each session sends removed; ``off``: RFC 4733 only)."""
    pinned = _pin(SERVER_CPU)
    greeting = load_greeting(greeting_kind)
    digits = {"rfc4733": 0, "inband": 0, "info": 0}
    # Warm the detector's confirmation path (its first lstsq loads LAPACK: a one-off stall of ~0.4 s).
    InbandDetector().feed(np.concatenate([dtmf_tone("7", 800), np.zeros(800)]))

    def on_digit(pressed: Any) -> None:
        digits[pressed.source.value] += 1

    async def main() -> None:
        loop = asyncio.get_running_loop()
        allocator = PortAllocator(40000, 59999)
        clock = MediaClock()
        sessions = [
            await allocator.open(lambda: RtpSession(detect_inband=detector == "bank")) for _ in range(calls)
        ]
        played_from = time.monotonic()
        for session in sessions:
            session.remote = sink
            session.play(greeting.pcmu, clock, loop=True)
            session.on_digit = on_digit  # the greeting's digit collection listens
        conn.send({"ports": [s.local[1] for s in sessions], "pinned": pinned, "played_from": played_from})
        await loop.run_in_executor(None, conn.recv)  # "measure": the warm-up is over
        profiler = None
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        cpu0, wall0 = time.process_time(), time.monotonic()
        switches0 = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
        await loop.run_in_executor(None, conn.recv)  # "report"
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        preempted = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw - switches0
        if profiler is not None:
            import pstats

            profiler.disable()
            print(f"--- profile of the server, {calls} calls, {loop_kind} ---")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(22)
        await asyncio.sleep(0.3)  # the last inbound packets
        result = {
            "cpu": cpu / wall,
            "received": sum(s.stats.received for s in sessions),
            "skipped": sum(s.stats.skipped_frames for s in sessions),
            "digits": dict(digits),
            "slips": clock.detectors.slips,
            "preempted": preempted,
        }
        for session in sessions:
            session.close()
        await clock.close()
        conn.send(result)

    with asyncio.Runner(loop_factory=event_loop_factory(loop_kind)) as runner:
        runner.run(main())


def run_step(
    calls: int, loop_kind: str, detector: str, greeting: str, seconds: float, warmup: float, profile: bool
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")  # the sender and the sink share the load generator's socket
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.bind((HOST, 0))
    server_end, server_conn = ctx.Pipe()
    server = ctx.Process(
        target=_server, args=(calls, loop_kind, detector, greeting, profile, sock.getsockname(), server_conn)
    )
    server.start()
    try:
        ready = server_end.recv()
        sink_end, sink_conn = ctx.Pipe()
        sender_end, sender_conn = ctx.Pipe()
        total = warmup + seconds
        sink = ctx.Process(target=_sink, args=(sock, total, warmup, sink_conn))
        sink.start()
        start = time.monotonic() + 0.2
        sender = ctx.Process(
            target=_sender,
            args=(sock, ready["ports"], total, start, greeting, ready["played_from"], sender_conn),
        )
        sender.start()
        time.sleep(start + warmup - time.monotonic())
        server_end.send("measure")
        time.sleep(max(0.0, start + total - time.monotonic()))
        server_end.send("report")
        sent = sender_end.recv()
        result = server_end.recv()
        jitter = sink_end.recv()
        for process in (sender, sink, server):
            process.join(10)
    finally:
        for process in multiprocessing.active_children():
            process.kill()
        sock.close()
    return {
        "calls": calls,
        "loop": loop_kind,
        "detector": detector,
        "pinned": ready["pinned"],
        **jitter,
        **result,
        "load": sent,
    }


def calls_ladder(
    ladder: list[int],
    loops: list[str],
    detectors: list[str],
    greeting: str,
    seconds: float,
    profile_at: int | None,
) -> None:
    print(
        f"\ncalls in the greeting: the {greeting} greeting out, 50 pps PCMU in (its echo, 6 dB down, 40 ms "
        f"late, and digits), {seconds:g} s a step after 2 s warm-up; jitter at the sink (kernel timestamps)\n"
    )
    header = (
        f"{'loop':8} {'in-band':8} {'calls':>5} {'sent pkts':>9} {'lost':>5} {'late':>5} {'in lost':>7} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'cpu':>5} {'digits':>11} {'gen lag':>7} {'preempt':>7}"
    )
    print(header)
    print("-" * len(header))
    for loop_kind, detector in [(lo, de) for de in detectors for lo in loops]:
        for calls in ladder:
            r = run_step(calls, loop_kind, detector, greeting, seconds, 2.0, profile_at == calls)
            in_lost = r["load"]["sent"] - r["received"]
            got = r["digits"]["rfc4733"] + r["digits"]["inband"]
            print(
                f"{loop_kind:8} {detector:8} {calls:5d} {r['packets']:9d} {r['lost']:5d} {r['late']:5d} "
                f"{in_lost:7d} "
                f"{r['p50']:7.2f} {r['p99']:7.2f} {r['max']:7.1f} {r['cpu']:5.0%} "
                f"{got:5d}/{r['load']['digits']:<5d} {r['load']['max_lag_ms']:5.1f}ms {r['preempted']:7d}"
                + (f"  (slips {r['slips']})" if r["slips"] else ""),
                flush=True,
            )
            if r["lost"] or r["late"] or in_lost > 0 or r["p99"] > 5.0:
                break


# ------------------------------------------------------------------------------------ bridged calls

#: The start of each relayed packet's payload: its send time (ns, CLOCK_REALTIME, the clock of the kernel's
#: receive timestamps), the call and the direction (0: caller → callee, 1: callee → caller).
_STAMP = struct.Struct("!qIB")
_RECORD = np.dtype(
    [("seq", ">u2"), ("ts", ">u4"), ("ssrc", ">u4"), ("sent", ">i8"), ("call", ">u4"), ("leg", "u1")]
)
RELAY_SLOTS = 20  # the streams' phases within each 20 ms: one group of streams every 1 ms
GENERATOR_SLACK_MS = 5.0  # a step whose sender fell further behind its schedule is repeated (twice at most)


def _relay_sender(
    sockets: tuple[socket.socket, socket.socket],
    ports: list[tuple[int, int]],
    seconds: float,
    start: float,
    boundary_ns: int,
    conn: Connection,
) -> None:
    """Send 50 pps PCMU into both legs of every call (the caller socket to each A port, the callee socket to
    each B port) for ``seconds``; the streams' phases are spread over the 20 ms in 1 ms slots."""
    _pin(LOADGEN_CPU)
    caller, callee = sockets
    streams = []
    for call, (a_port, b_port) in enumerate(ports):
        streams.append((caller.sendto, (HOST, a_port), call, 0))
        streams.append((callee.sendto, (HOST, b_port), call, 1))
    slots: list[list[tuple[Any, tuple[str, int], int, int, int]]] = [[] for _ in range(RELAY_SLOTS)]
    for k, (sendto, address, call, leg) in enumerate(streams):
        slots[k % RELAY_SLOTS].append((sendto, address, call, leg, 2 * call + leg + 1))
    buffer = bytearray(b"\xff" * (12 + 160))  # PCMU silence after the header and the stamp
    header = _HEADER.pack_into
    stamp = _STAMP.pack_into
    time_ns = time.time_ns
    total = int(seconds / 0.02)
    max_lag = 0.0
    measured = [0, 0]
    cpu0 = time.process_time()
    for n in range(total):
        ts = (n * 160) & 0xFFFFFFFF
        seq = n & 0xFFFF
        for s, group in enumerate(slots):
            due = start + n * 0.02 + s * 0.001
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif time_ns() >= boundary_ns:  # behind schedule while measuring
                max_lag = max(max_lag, -delay)
            for sendto, address, call, leg, ssrc in group:
                header(buffer, 0, 0x80, 0, seq, ts, ssrc)
                now = time_ns()
                stamp(buffer, 12, now, call, leg)
                sendto(buffer, address)
                if now >= boundary_ns:
                    measured[leg] += 1
    cpu = (time.process_time() - cpu0) / max(1e-9, time.monotonic() - start)
    conn.send({"sent": measured, "max_lag_ms": max_lag * 1e3, "cpu": cpu})


def _relay_sink(sock: socket.socket, seconds: float, boundary_ns: int, conn: Connection) -> None:
    """Receive one direction's relayed packets with kernel timestamps: latency and sequence gaps.

    The sink drains its socket every millisecond instead of blocking in ``recvmsg``: a blocked reader makes
    every ``sendto`` of the server wake it (an inter-processor wake-up charged to the server, which a far
    end on another machine does not cost). The kernel timestamps do not depend on when the sink reads."""
    _pin(LOADGEN_CPU)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setblocking(False)
    records: list[bytes] = []
    stamps: list[bytes] = []
    no_stamp = bytes(16)
    end = time.monotonic() + seconds + 1.0
    recvmsg = sock.recvmsg
    keep, keep_stamp = records.append, stamps.append
    cpu0, wall0 = time.process_time(), time.monotonic()
    while time.monotonic() < end:
        try:
            data, ancillary, _, _ = recvmsg(2048, 64)
        except BlockingIOError:
            time.sleep(0.001)
            continue
        if len(data) < 25:
            continue
        keep(data[2:25])
        keep_stamp(ancillary[0][2] if ancillary else no_stamp)
    cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0)
    conn.send({**_relay_figures(b"".join(records), b"".join(stamps), boundary_ns), "cpu": cpu})


def _relay_figures(records: bytes, stamps: bytes, boundary_ns: int) -> dict[str, Any]:
    rec = np.frombuffer(records, dtype=_RECORD)
    spec = np.frombuffer(stamps, dtype=np.int64).reshape(-1, 2)
    received_ns = spec[:, 0] * 1_000_000_000 + spec[:, 1]
    keep = rec["sent"] >= boundary_ns
    rec, received_ns = rec[keep], received_ns[keep]
    if rec.size == 0:
        return {"packets": 0, "streams": 0, "gaps": 0, "duplicates": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    latency = (received_ns - rec["sent"].astype(np.int64)) / 1e6
    order = np.lexsort((rec["sent"], rec["ssrc"]))
    ssrc, seq = rec["ssrc"][order], rec["seq"][order].astype(np.int64)
    starts = np.flatnonzero(np.r_[True, ssrc[1:] != ssrc[:-1]])
    group = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, ssrc.size]))
    delta = (seq - seq[starts][group]) & 0xFFFF
    delta = np.where(delta >= 0x8000, delta - 0x10000, delta)  # unwrapped, relative to the stream's first
    spans = np.maximum.reduceat(delta, starts) - np.minimum.reduceat(delta, starts) + 1
    unique = np.array(
        [np.unique(delta[a:b]).size for a, b in zip(starts, np.r_[starts[1:], ssrc.size], strict=True)]
    )
    return {
        "packets": int(rec.size),
        "streams": int(starts.size),
        "gaps": int((spans - unique).sum()),
        "duplicates": int(rec.size - unique.sum()),
        "p50": float(np.percentile(latency, 50)),
        "p99": float(np.percentile(latency, 99)),
        "max": float(latency.max()),
    }


def _relay_server(
    calls: int,
    loop_kind: str,
    profile: bool,
    caller: tuple[str, int],
    callee: tuple[str, int],
    profile_out: str | None,
    conn: Connection,
) -> None:
    """The measured process: ``calls`` bridged calls, set up as the B2BUA does (``AnchoredMedia``: the
    caller's offer answered, the callee offered a port, its answer bridged by ``bridge_callee``)."""
    from durchwahl.media.sdp import Origin, answer, make_offer, parse_sdp
    from durchwahl.routing.calls.media_anchor import AnchoredMedia

    pinned = _pin(SERVER_CPU)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        allocator = PortAllocator(40000, 59999)
        clock = MediaClock()
        anchored: list[AnchoredMedia] = []
        for i in range(calls):
            media = AnchoredMedia(allocator, clock, HOST)
            offer = make_offer(Origin("caller", str(i), 1, HOST, "IP4"), address=HOST, port=caller[1])
            await media.answer_caller(bytes(offer))
            callee_offer = parse_sdp(await media.offer_callee())
            reply = answer(
                callee_offer, Origin("callee", str(i), 1, HOST, "IP4"), address=HOST, port=callee[1]
            )
            media.bridge_callee(bytes(reply))
            anchored.append(media)

        def relayed() -> int:
            from durchwahl.media.relay import Side

            return sum(
                m.bridge.relay.stats(side).relayed for m in anchored if m.bridge is not None for side in Side
            )

        ports = [(m.a.local[1], m.b.local[1]) for m in anchored if m.a is not None and m.b is not None]
        conn.send({"ports": ports, "pinned": pinned, "pid": os.getpid()})
        await loop.run_in_executor(None, conn.recv)  # "measure": the warm-up is over
        profiler = None
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        relayed0 = relayed()
        times0, wall0 = os.times(), time.monotonic()
        switches0 = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
        await loop.run_in_executor(None, conn.recv)  # "report"
        times, wall = os.times(), time.monotonic() - wall0
        preempted = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw - switches0
        system = times.system - times0.system
        cpu = times.user - times0.user + system
        count = relayed() - relayed0
        if profiler is not None:
            import pstats

            profiler.disable()
            print(f"--- profile of the server, {calls} bridged calls, {loop_kind} ---")
            stats = pstats.Stats(profiler)
            if profile_out:
                stats.dump_stats(profile_out)
            stats.sort_stats("tottime").print_stats(25)
        await asyncio.sleep(0.3)  # the last packets
        sessions = [s for m in anchored for s in (m.a, m.b) if s is not None]
        result = {
            "cpu": cpu / wall,
            "system": system / cpu if cpu else 0.0,
            "preempted": preempted,
            "cpu_per_packet_us": cpu / count * 1e6 if count else 0.0,
            "relayed": count,
            "received": sum(s.stats.received for s in sessions),
            "foreign": sum(s.stats.dropped_foreign + s.stats.dropped_garbage for s in sessions),
        }
        for media in anchored:
            media.close()
        await clock.close()
        conn.send(result)

    with asyncio.Runner(loop_factory=event_loop_factory(loop_kind)) as runner:
        runner.run(main())


def _floor_server(
    calls: int,
    loop_kind: str,
    profile: bool,
    caller: tuple[str, int],
    callee: tuple[str, int],
    profile_out: str | None,
    conn: Connection,
) -> None:
    """The floor of a Python relay, for comparison: no asyncio, no session or relay objects. Two UDP sockets
    per call in one epoll; each wake-up reads one datagram from every ready socket, gives it a new SSRC,
    sequence number and timestamp (fixed offsets, as within one epoch of ``OutgoingStream``) with one
    ``struct.pack_into`` on a copy, and sends it from the other leg's socket. No latching, no hold, no
    events, no duplicate detection: what any Python relay pays at least per packet."""
    import select as select_

    pinned = _pin(SERVER_CPU)
    numbers = struct.Struct("!HII")
    socks: dict[int, socket.socket] = {}
    routes: dict[int, tuple[Any, tuple[str, int], int, int, int]] = {}
    ports: list[tuple[int, int]] = []
    epoll = select_.epoll()
    for i in range(calls):
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for sock in (a, b):
            sock.bind((HOST, 0))
            sock.setblocking(False)
            socks[sock.fileno()] = sock
            epoll.register(sock.fileno(), select_.EPOLLIN)
        # From A (the caller) out through B to the callee, and back; seq/ts offsets and a new SSRC.
        routes[a.fileno()] = (b.sendto, callee, 1000 + i, 160 * i, 0x10000000 + 2 * i)
        routes[b.fileno()] = (a.sendto, caller, 2000 + i, 320 * i, 0x10000001 + 2 * i)
        ports.append((a.getsockname()[1], b.getsockname()[1]))
    conn.send({"ports": ports, "pinned": pinned, "pid": os.getpid()})
    relayed = 0
    times0 = os.times()
    wall0 = time.monotonic()
    count0 = 0
    poll = epoll.poll
    unpack, pack_into = numbers.unpack_from, numbers.pack_into
    while True:
        if conn.poll():
            message = conn.recv()
            if message == "measure":
                times0, wall0, count0 = os.times(), time.monotonic(), relayed
                continue
            break
        for fd, _ in poll(0.05, 64):
            try:
                data = socks[fd].recv(4096)
            except BlockingIOError:
                continue
            send, to, seq_offset, ts_offset, ssrc = routes[fd]
            sequence, timestamp, _ = unpack(data, 2)
            out = bytearray(data)
            pack_into(out, 2, (sequence + seq_offset) & 0xFFFF, (timestamp + ts_offset) & 0xFFFFFFFF, ssrc)
            send(out, to)
            relayed += 1
    times, wall = os.times(), time.monotonic() - wall0
    system = times.system - times0.system
    cpu = times.user - times0.user + system
    count = relayed - count0
    conn.send(
        {
            "cpu": cpu / wall,
            "system": system / cpu if cpu else 0.0,
            "preempted": 0,
            "cpu_per_packet_us": cpu / count * 1e6 if count else 0.0,
            "relayed": count,
            "received": relayed,
            "foreign": 0,
        }
    )


def run_relay_step(
    calls: int,
    loop_kind: str,
    seconds: float,
    warmup: float,
    profile: bool,
    profile_out: str | None = None,
    floor: bool = False,
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")  # the sender and the sinks share the load generator's sockets
    sockets = []
    for _ in range(2):  # the caller's and the callee's
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.bind((HOST, 0))
        sockets.append(sock)
    caller, callee = sockets
    server_end, server_conn = ctx.Pipe()
    server = ctx.Process(
        target=_floor_server if floor else _relay_server,
        args=(
            calls,
            loop_kind,
            profile,
            caller.getsockname(),
            callee.getsockname(),
            profile_out,
            server_conn,
        ),
    )
    server.start()
    try:
        ready = server_end.recv()
        total = warmup + seconds
        start = time.monotonic() + 0.2
        boundary_ns = time.time_ns() + round((start + warmup - time.monotonic()) * 1e9)
        sinks = []
        for sock in sockets:
            sink_end, sink_conn = ctx.Pipe()
            sink = ctx.Process(target=_relay_sink, args=(sock, total, boundary_ns, sink_conn))
            sink.start()
            sinks.append((sink, sink_end))
        sender_end, sender_conn = ctx.Pipe()
        sender = ctx.Process(
            target=_relay_sender,
            args=((caller, callee), ready["ports"], total, start, boundary_ns, sender_conn),
        )
        sender.start()
        time.sleep(max(0.0, start + warmup - time.monotonic()))
        server_end.send("measure")
        time.sleep(max(0.0, start + total - time.monotonic()))
        server_end.send("report")
        sent = sender_end.recv()
        result = server_end.recv()
        # Caller → callee arrives at the callee's socket (the second sink), callee → caller at the first.
        to_caller, to_callee = (end.recv() for _, end in sinks)
        for process in (sender, server, *(s for s, _ in sinks)):
            process.join(10)
    finally:
        for process in multiprocessing.active_children():
            process.kill()
        for sock in sockets:
            sock.close()
    directions = (to_callee, to_caller)
    packets = sum(d["packets"] for d in directions)
    return {
        "calls": calls,
        "loop": loop_kind,
        "pinned": ready["pinned"],
        "packets": packets,
        "lost": sum(sent["sent"]) - packets,
        "gaps": sum(d["gaps"] for d in directions),
        "duplicates": sum(d["duplicates"] for d in directions),
        "streams": sum(d["streams"] for d in directions),
        # Percentiles over both directions: the worse direction's (they carry the same number of packets).
        "p50": max(d["p50"] for d in directions),
        "p99": max(d["p99"] for d in directions),
        "max": max(d["max"] for d in directions),
        **result,
        "load": sent,
        "gen_cpu": sent["cpu"] + sum(d["cpu"] for d in directions),
    }


def relay_ladder(
    ladder: list[int],
    loops: list[str],
    seconds: float,
    profile_at: int | None,
    profile_out: str | None,
    floor: bool = False,
) -> None:
    print(
        f"\nbridged calls: 50 pps PCMU into each leg, relayed to the other (MediaBridge), {seconds:g} s "
        "per step after 2 s warm-up; relay latency at the sink (kernel timestamp − send time)\n"
    )
    header = (
        f"{'loop':8} {'calls':>5} {'relayed':>8} {'lost':>5} {'gaps':>5} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>7} {'cpu':>5} {'kernel':>6} {'µs/pkt':>6} {'preempt':>7} {'gen lag':>7} {'gen cpu':>7}"
    )
    print(header)
    print("-" * len(header))
    for loop_kind in loops:
        for calls in ladder:
            for _attempt in range(3):
                r = run_relay_step(calls, loop_kind, seconds, 2.0, profile_at == calls, profile_out, floor)
                if r["load"]["max_lag_ms"] <= GENERATOR_SLACK_MS:
                    break
                # The generator fell behind (its CPU is shared): its late packets leave as a burst.
                print(f"  (generator {r['load']['max_lag_ms']:.1f} ms behind: step repeated)", flush=True)
            print(
                f"{loop_kind:8} {calls:5d} {r['packets']:8d} {r['lost']:5d} {r['gaps']:5d} {r['p50']:7.2f} "
                f"{r['p99']:7.2f} {r['max']:7.1f} {r['cpu']:5.0%} {r['system']:6.0%} "
                f"{r['cpu_per_packet_us']:6.1f} {r['preempted']:7d} "
                f"{r['load']['max_lag_ms']:5.1f}ms {r['gen_cpu']:7.0%}",
                flush=True,
            )
            if r["streams"] != 2 * calls or r["duplicates"] or r["foreign"]:
                print(
                    f"  (streams {r['streams']}/{2 * calls}, duplicates {r['duplicates']}, "
                    f"foreign/garbage {r['foreign']})"
                )
            if r["lost"] or r["gaps"] or r["p99"] > 5.0:
                break


# ---------------------------------------------------------------------------------------- detector


def _median_time(fn: Callable[[], object], repeat: int, number: int) -> float:
    return statistics.median(timeit.repeat(fn, repeat=repeat, number=number)) / number


def _echoing_call(greeting: Greeting, rng: np.random.Generator, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """``frames`` frames of a greeting call from a random point of the looped greeting: what we sent, and
    what came back (its echo, 6 dB down and 40 ms late, with line noise)."""
    looped = np.roll(
        ulaw_decode(b"".join(greeting.pcmu)).astype(np.float64), -160 * rng.integers(greeting.frames)
    )
    sent = np.resize(looped, frames * 160)
    back = ECHO_GAIN * np.concatenate([np.zeros(ECHO_FRAMES * 160), sent])[: len(sent)]
    return sent, back + rng.normal(0, 10, len(back))


def _plain(encoded: list[bytes]) -> None:
    detector = InbandDetector()
    for payload in encoded:
        detector.feed(ulaw_decode(payload))


def _aware(encoded: list[bytes], sent: np.ndarray) -> None:
    detector = GreetingDetector()
    for i, payload in enumerate(encoded):
        detector.feed(ulaw_decode(payload), sent[i * 160 : (i + 1) * 160])


def _bank_ticks(
    bank: DetectorBank, handles: list[int], calls: list[tuple[np.ndarray, np.ndarray]], first: int, count: int
) -> None:
    for n in range(first, first + count):
        for handle, (sent, back) in zip(handles, calls, strict=True):
            bank.sent(handle, sent[n * 160 : (n + 1) * 160], n * 160)
            bank.received(handle, n * 160, back[n * 160 : (n + 1) * 160])
        bank.tick()


def detector_cost(repeat: int) -> None:
    """CPU per channel-hour of in-band detection in the greeting, one stream at a time and batched."""
    _pin(SERVER_CPU)
    hour = 3600 * 50  # frames per channel-hour
    frames = 250  # 5 s
    print(
        f"\nin-band detection in the greeting, its echo coming back: CPU per channel-hour, median of {repeat}"
    )
    print(f"{'way':62} {'greeting':>8} {'µs/frame':>9} {'s/ch-hour':>10}")
    for kind in ("speech", "example"):
        greeting = load_greeting(kind)
        rng = np.random.default_rng(1)
        sent, back = _echoing_call(greeting, rng, frames)
        pcm = np.round(back).astype(np.int16)
        encoded = [ulaw_encode(pcm[i * 160 : (i + 1) * 160]) for i in range(frames)]
        for name, fn in (
            ("one stream: InbandDetector.feed (no echo canceller)", functools.partial(_plain, encoded)),
            ("one stream: GreetingDetector.feed (echo cancelled)", functools.partial(_aware, encoded, sent)),
        ):
            t = _median_time(fn, repeat, 1) / frames
            print(f"{name:62} {kind:>8} {t * 1e6:9.1f} {t * hour:10.2f}")
        for streams in (100, 500, 1000):
            calls = [_echoing_call(greeting, rng, 2 * frames) for _ in range(streams)]
            bank = DetectorBank()
            handles = [bank.join() for _ in range(streams)]
            _bank_ticks(bank, handles, calls, 0, frames)  # five seconds: the filters have converged
            began = time.process_time()
            _bank_ticks(bank, handles, calls, frames, frames)
            t = (time.process_time() - began) / frames / streams
            name = f"batched: DetectorBank, {streams} streams (sent + received + tick)"
            print(f"{name:62} {kind:>8} {t * 1e6:9.1f} {t * hour:10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--mode",
        choices=("greeting", "relay", "floor"),
        default="greeting",
        help="greeting: calls in the greeting phase (greeting out, digits detected on the caller's audio); "
        "relay: bridged calls (two legs relayed by a MediaBridge); floor: the same load through a bare "
        "Python relay loop (no asyncio, no objects), the floor of any Python relay",
    )
    parser.add_argument(
        "--ladder", default=None, help="calls per step (greeting: 25,…,1000; relay: 50,…,1000)"
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--loops", default="asyncio,uvloop")
    parser.add_argument(
        "--detectors",
        default="bank,off",
        help="in-band detection in the calls: bank (the media clock's DetectorBank, echo cancelled, as "
        "shipped), off (RFC 4733 only)",
    )
    parser.add_argument(
        "--greeting",
        choices=("example", "speech"),
        default="speech",
        help="example: examples/greeting.wav (a chime of pure tones); speech: 10 s of synthetic speech",
    )
    parser.add_argument("--profile", type=int, default=None, help="profile the server at this many calls")
    parser.add_argument("--profile-out", default=None, help="relay mode: also dump the profile to this file")
    parser.add_argument("--skip-calls", action="store_true")
    parser.add_argument("--skip-detector", action="store_true")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    loops = []
    for kind in args.loops.split(","):
        if kind == "uvloop":
            try:
                import uvloop  # noqa: F401
            except ImportError:
                print("uvloop is not installed: skipped")
                continue
        loops.append(kind)
    print(
        f"python {platform.python_version()}, {platform.machine()}, nproc {os.cpu_count()}, "
        f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}; server on CPU {SERVER_CPU}, "
        f"load generator on CPU {LOADGEN_CPU}"
    )
    if args.mode in ("relay", "floor"):
        ladder = [int(n) for n in (args.ladder or "50,100,200,300,400,600,800,1000").split(",")]
        with contextlib.suppress(KeyboardInterrupt):
            if args.mode == "floor":
                relay_ladder(ladder, ["none"], args.seconds, None, None, floor=True)
            else:
                relay_ladder(ladder, loops, args.seconds, args.profile, args.profile_out)
        return
    if not args.skip_detector:
        detector_cost(args.repeat)
    if not args.skip_calls:
        with contextlib.suppress(KeyboardInterrupt):
            calls_ladder(
                [int(n) for n in (args.ladder or "100,200,300,400,500,600,800,1000").split(",")],
                loops,
                args.detectors.split(","),
                args.greeting,
                args.seconds,
                args.profile,
            )


if __name__ == "__main__":
    main()
