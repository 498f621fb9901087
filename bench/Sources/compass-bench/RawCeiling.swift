import CBenchZMQ
import Foundation

/// `compass-bench echo`: a ROUTER that sends every message straight back (frames forwarded, no
/// copy), in its own process like the broker. The physical limit everything else is divided by.
func echoMain(_ args: Args) throws {
    dieWithParent()
    let ctx = Ctx(ioThreads: 1)
    let s = Sock(ctx, ZMQ_ROUTER)
    s.setInt(ZMQ_SNDHWM, 100_000)
    s.setInt(ZMQ_RCVHWM, 100_000)
    try s.bind(args.string("--bind") ?? "tcp://127.0.0.1:*")
    print("echo listening \(s.lastEndpoint)")
    fflush(stdout)
    let until = monoNs() + UInt64((args.double("--max-seconds") ?? 120) * 1e9)
    s.setReceiveTimeout(ms: 500)
    while monoNs() < until {
        guard let f = s.receive(dontWait: false) else { continue }
        s.send(f.map { .msg($0) })
    }
}

struct RawResult {
    var roundTrips = 0
    var seconds = 0.0
    var hist = newHist()
}

/// DEALER against the echo server: `window` messages of `size` bytes in flight.
func rawClosedLoop(ctx: Ctx, endpoint: String, size: Int, window: Int, warmup: Double, duration: Double) throws -> RawResult {
    let s = Sock(ctx, ZMQ_DEALER)
    s.setInt(ZMQ_SNDHWM, 100_000)
    s.setInt(ZMQ_RCVHWM, 100_000)
    try s.connect(endpoint)
    let payload = StaticBytes([UInt8](repeating: 0x61, count: size))
    let poller = Poller()
    _ = poller.add(s)
    // Each message carries its send time in a small first frame, so latency needs no lookup.
    func send(_ t: UInt64) { s.send([.u32(UInt32(truncatingIfNeeded: t >> 32)), .u32(UInt32(truncatingIfNeeded: t)), .shared(payload)]) }
    let t0 = monoNs()
    let from = t0 + UInt64(warmup * 1e9), to = from + UInt64(duration * 1e9)
    var out = RawResult()
    for _ in 0..<window { send(monoNs()) }
    while true {
        let now = monoNs()
        if now >= to { break }
        poller.poll(timeoutMs: min(50, msUntil(to, now: now)))
        while let f = s.receive(dontWait: true) {
            let t = monoNs()
            guard f.count == 3 else { continue }
            let sent = UInt64(f[0].u32) << 32 | UInt64(f[1].u32)
            if t >= from && t < to {
                out.roundTrips += 1
                _ = out.hist.record(max(1, (t - sent) / 1000))
            }
            if t < to { send(t) }
        }
    }
    out.seconds = duration
    return out
}

/// One message at a time against the echo server, on a socket kept between calls (so that raw
/// and compass samples can be interleaved and see the same interference from other processes).
final class RawPinger {
    let s: Sock
    let payload: StaticBytes
    let poller = Poller()
    init(ctx: Ctx, endpoint: String, size: Int) throws {
        s = Sock(ctx, ZMQ_DEALER)
        try s.connect(endpoint)
        payload = StaticBytes([UInt8](repeating: 0x61, count: size))
        _ = poller.add(s)
    }
    func ping(_ count: Int, into hist: inout Hist) {
        for _ in 0..<count {
            let t = monoNs()
            s.send([.shared(payload)])
            while true {
                poller.poll(timeoutMs: 1000)
                if s.receive(dontWait: true) != nil { break }
                if monoNs() - t > 5_000_000_000 { return }
            }
            _ = hist.record(max(1, (monoNs() - t) / 1000))
        }
    }
}
