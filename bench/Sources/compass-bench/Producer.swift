import CBenchZMQ
import Foundation
import Histogram

/// Latencies in microseconds (1 µs to 100 s, 3 significant digits).
typealias Hist = Histogram<UInt64>
func newHist() -> Hist { Hist(lowestDiscernibleValue: 1, highestTrackableValue: 100_000_000, numberOfSignificantValueDigits: .three) }

func summary(_ h: Hist) -> [String: Any] {
    guard h.totalCount > 0 else { return ["count": 0] }
    return ["count": Int(h.totalCount), "p50_us": Int(h.valueAtPercentile(50)), "p90_us": Int(h.valueAtPercentile(90)),
            "p99_us": Int(h.valueAtPercentile(99)), "p999_us": Int(h.valueAtPercentile(99.9)),
            "max_us": Int(h.max), "mean_us": (h.mean * 10).rounded() / 10]
}

/// A producer that speaks the producer protocol directly (HELLO, SUBMIT, ACK), with a window of
/// batches in flight. It measures the broker, not a client library.
final class RawProducer {
    let sock: Sock
    let session: String
    let pool: String
    var seq = 0
    var sentAt: [String: UInt64] = [:]
    var busyRetries = 0
    var failures = 0
    /// Results whose batch id was not awaited: a second delivery, or an id this producer never sent.
    var unexpected = 0
    let poolFrame: [UInt8]

    init(ctx: Ctx, frontend: String, pool: String = "bench", session: String? = nil, curve: CurveClient? = nil) throws {
        sock = Sock(ctx, ZMQ_DEALER)
        sock.setInt(ZMQ_SNDHWM, 100_000)
        sock.setInt(ZMQ_RCVHWM, 100_000)
        self.session = session ?? "bench-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        self.pool = pool
        poolFrame = Array(pool.utf8)
        sock.setBytes(ZMQ_ROUTING_ID, Array("p-\(self.session)".utf8))
        if let curve { try sock.setCurveClient(curve) }
        try sock.connect(frontend)
        sock.send([.shared(Wire.header), .bytes([Wire.hello]), .string(self.session)])
        let poller = Poller()
        _ = poller.add(sock)
        let until = monoNs() + 10_000_000_000
        while monoNs() < until {
            poller.poll(timeoutMs: 100)
            if let f = sock.receive(dontWait: true), f.count >= 2, f[1].u8 == Wire.welcome { return }
        }
        throw BenchError("no WELCOME from the broker at \(frontend)")
    }

    func submit(_ payload: StaticBytes, _ meta: StaticBytes, now: UInt64) {
        seq += 1
        let id = "\(session)-\(seq)"
        sentAt[id] = now
        sock.send([.shared(Wire.header), .bytes([Wire.submit]), .string(id), .bytes(poolFrame), .shared(meta), .shared(payload)])
    }

    func resubmit(_ id: String, _ payload: StaticBytes, _ meta: StaticBytes) {
        sock.send([.shared(Wire.header), .bytes([Wire.submit]), .string(id), .bytes(poolFrame), .shared(meta), .shared(payload)])
    }

    func ack(_ id: Msg) {
        sock.send([.shared(Wire.header), .bytes([Wire.ack]), .msg(id)])
    }

    struct Outcome {
        var completed = 0
        var seconds = 0.0
        var hist = newHist()
    }

    /// Keeps `window` batches in flight: each RESULT is ACKed and replaced by a new SUBMIT. Counts
    /// the results of a measuring window of `duration` seconds that opens after `warmup` seconds
    /// and once `window` results have come back (the pipeline is full by then).
    func closedLoop(payload: StaticBytes, meta: StaticBytes, window: Int, warmup: Double, duration: Double) -> Outcome {
        let poller = Poller()
        _ = poller.add(sock)
        let t0 = monoNs()
        let warmUntil = t0 + UInt64(warmup * 1e9)
        let hardStop = t0 + UInt64((warmup + duration) * 1e9) + 60_000_000_000
        var measureFrom = UInt64.max, measureTo = UInt64.max
        var received = 0
        var out = Outcome()
        var retries: [(at: UInt64, id: String)] = []
        for _ in 0..<window { submit(payload, meta, now: monoNs()) }
        while true {
            var now = monoNs()
            if now >= measureTo || now >= hardStop { break }
            poller.poll(timeoutMs: measureTo == .max ? 50 : min(50, msUntil(measureTo, now: now)))
            now = monoNs()
            while let f = sock.receive(dontWait: true) {
                guard f.count >= 3 else { continue }
                switch f[1].u8 {
                case Wire.result, Wire.failed:
                    let t = monoNs()
                    let id = f[2].string
                    if f[1].u8 == Wire.failed { failures += 1 }
                    ack(f[2])
                    guard let sent = sentAt.removeValue(forKey: id) else { unexpected += 1; continue }
                    received += 1
                    if measureFrom == .max && received >= window && t >= warmUntil {
                        measureFrom = t
                        measureTo = t + UInt64(duration * 1e9)
                    } else if t >= measureFrom && t < measureTo {
                        out.completed += 1
                        _ = out.hist.record(max(1, (t - sent) / 1000))
                    }
                    if t < measureTo { submit(payload, meta, now: t) }
                case Wire.rejected:
                    busyRetries += 1
                    retries.append((now + 20_000_000, f[2].string))
                default:
                    break
                }
            }
            if !retries.isEmpty {
                let due = retries.filter { $0.at <= now }
                retries.removeAll { $0.at <= now }
                for r in due { resubmit(r.id, payload, meta) }
            }
        }
        out.seconds = measureTo == .max ? 0 : duration
        return out
    }

    /// Submits `count` batches with ids of their own (`window` in flight), ACKs every answer, and
    /// checks that each came back exactly once, as RESULT: then the broker's STATUS (answered after
    /// everything sent before it) must count `count` batches dispatched and completed, none queued,
    /// running or failed, so no second delivery is still on its way. Nothing is timed.
    func exactlyOnce(payload: StaticBytes, meta: StaticBytes, count: Int, window: Int, timeoutS: Double = 60) -> [String: Any] {
        let poller = Poller()
        _ = poller.add(sock)
        var outstanding: Set<String> = [], done: Set<String> = []
        var sent = 0, duplicates = 0, unknown = 0, failed = 0, rejected = 0
        func next() {
            sent += 1
            let id = "\(session)-once-\(sent)"
            outstanding.insert(id)
            sock.send([.shared(Wire.header), .bytes([Wire.submit]), .string(id), .bytes(poolFrame), .shared(meta), .shared(payload)])
        }
        func handle(_ f: [Msg]) {
            guard f.count >= 3 else { return }
            switch f[1].u8 {
            case Wire.result, Wire.failed:
                let id = f[2].string
                ack(f[2])
                if f[1].u8 == Wire.failed { failed += 1 }
                if outstanding.remove(id) != nil {
                    done.insert(id)
                    if sent < count { next() }
                } else if done.contains(id) { duplicates += 1 } else { unknown += 1 }
            case Wire.rejected: rejected += 1
            default: break
            }
        }
        let giveUp = monoNs() + UInt64(timeoutS * 1e9)
        while sent < min(window, count) { next() }
        while done.count < count && monoNs() < giveUp && rejected == 0 {
            poller.poll(timeoutMs: 50)
            while let f = sock.receive(dontWait: true) { handle(f) }
        }
        pending.removeAll()
        let status = self.status()
        for f in pending { handle(f) }
        let pools = (status?["scheduler"] as? [String: Any])?["pools"] as? [[String: Any]] ?? []
        let p = pools.first { $0["name"] as? String == pool } ?? [:]
        let counters = p["counters"] as? [String: Any] ?? [:]
        func int(_ d: [String: Any], _ k: String) -> Int { (d[k] as? NSNumber)?.intValue ?? -1 }
        var problems: [String] = []
        if done.count != count { problems.append("\(count - done.count) of \(count) batches never answered") }
        if duplicates > 0 { problems.append("\(duplicates) answered twice") }
        if unknown > 0 { problems.append("\(unknown) answers for ids never sent") }
        if failed > 0 { problems.append("\(failed) answered FAILED") }
        if rejected > 0 { problems.append("\(rejected) SUBMITs rejected") }
        if int(counters, "dispatched") != count || int(counters, "completed") != count {
            problems.append("STATUS counts \(int(counters, "dispatched")) dispatched and \(int(counters, "completed")) completed, not \(count)")
        }
        if int(p, "queued_batches") != 0 || int(p, "running_batches") != 0 {
            problems.append("STATUS still has \(int(p, "queued_batches")) queued and \(int(p, "running_batches")) running")
        }
        return ["batches": count, "window": window, "answered_once": done.count, "duplicates": duplicates, "unknown": unknown,
                "failed": failed, "rejected": rejected, "status_dispatched": int(counters, "dispatched"),
                "status_completed": int(counters, "completed"), "ok": problems.isEmpty, "problems": problems]
    }

    /// One batch at a time on an idle cluster: submit-to-result latency.
    func pingPong(payload: StaticBytes, meta: StaticBytes, count: Int, warmup: Int) -> Hist {
        let poller = Poller()
        _ = poller.add(sock)
        var hist = newHist()
        for i in 0..<(count + warmup) {
            let t = monoNs()
            submit(payload, meta, now: t)
            var done = false
            let giveUp = t + 10_000_000_000
            while !done && monoNs() < giveUp {
                poller.poll(timeoutMs: 100)
                while let f = sock.receive(dontWait: true) {
                    guard f.count >= 3 else { continue }
                    if f[1].u8 == Wire.result || f[1].u8 == Wire.failed {
                        let now = monoNs()
                        if i >= warmup { _ = hist.record(max(1, (now - t) / 1000)) }
                        ack(f[2])
                        sentAt.removeValue(forKey: f[2].string)
                        done = true
                    }
                }
            }
        }
        return hist
    }

    /// Open loop: submits at `rate` batches/s (paced on a 1 ms grid, never waiting for results) for
    /// `duration` s after `warmup` s; latency is counted from each SUBMIT's send to its RESULT.
    func openLoop(payload: StaticBytes, meta: StaticBytes, rate: Double, warmup: Double, duration: Double) -> (hist: Hist, achieved: Double) {
        let poller = Poller()
        _ = poller.add(sock)
        var hist = newHist()
        let t0 = monoNs()
        let measureFrom = t0 + UInt64(warmup * 1e9)
        let stopSending = measureFrom + UInt64(duration * 1e9)
        let interval = 1e9 / rate
        var sent = 0
        var completedInWindow = 0
        var measuredIDs: Set<String> = []
        var trace: [String] = []
        let debugTrace = ProcessInfo.processInfo.environment["BENCH_TRACE"] != nil
        let giveUp = stopSending + 5_000_000_000
        while true {
            var now = monoNs()
            if now >= stopSending && (measuredIDs.isEmpty || now >= giveUp) { break }
            if now < stopSending {
                let due = Int(Double(now - t0) / interval) + 1
                while sent < due {
                    submit(payload, meta, now: now)
                    if now >= measureFrom { measuredIDs.insert("\(session)-\(seq)") }
                    sent += 1
                }
            }
            let next = t0 + UInt64(Double(sent) * interval)
            poller.poll(timeoutMs: now >= stopSending ? 20 : min(20, msUntil(next, now: now)))
            now = monoNs()
            while let f = sock.receive(dontWait: true) {
                guard f.count >= 3 else { continue }
                if f[1].u8 == Wire.result || f[1].u8 == Wire.failed {
                    let id = f[2].string
                    ack(f[2])
                    if let s = sentAt.removeValue(forKey: id), measuredIDs.remove(id) != nil {
                        _ = hist.record(max(1, (now - s) / 1000))
                        if debugTrace { trace.append("\((s - t0) / 1000) \((now - t0) / 1000)") }
                        if now < stopSending { completedInWindow += 1 }
                    }
                }
            }
        }
        if debugTrace { try? trace.joined(separator: "\n").write(toFile: "/tmp/openloop-\(Int(rate)).txt", atomically: true, encoding: .utf8) }
        return (hist, Double(completedInWindow) / duration)
    }

    /// STATUS document as JSON.
    func status() -> [String: Any]? {
        sock.send([.shared(Wire.header), .bytes([Wire.status])])
        let poller = Poller()
        _ = poller.add(sock)
        let until = monoNs() + 5_000_000_000
        while monoNs() < until {
            poller.poll(timeoutMs: 100)
            while let f = sock.receive(dontWait: true) {
                if f.count >= 3, f[1].u8 == Wire.statusReply {
                    return (try? JSONSerialization.jsonObject(with: Data(f[2].bytes))) as? [String: Any]
                }
                pending.append(f)
            }
        }
        return nil
    }

    /// Messages that arrived while waiting for something else (recovery reads them).
    var pending: [[Msg]] = []
}
