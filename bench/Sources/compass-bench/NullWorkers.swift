import CBenchZMQ
import Foundation

/// Workers that speak the worker protocol directly and do nothing else: READY with credit, each
/// BATCH's payload echoed back as RESULT (the received frame is forwarded, no copy), HEARTBEAT every
/// interval. With a latency, each worker behaves like a GPU that takes exactly that long per batch:
/// batches run one after another in "virtual" time (a batch starts when it arrives or when the
/// previous one ends, whichever is later), and the RESULT leaves as soon as the poll loop sees its
/// end time pass; poll wake-up lateness delays that send but never accumulates.
///
/// Many workers share one thread and one zmq_poll (1,000 of them for the scaling run).
final class NullWorkerPool {
    struct Options {
        var backend: String
        var count: Int
        var credit = 2
        var latencyNs: UInt64 = 0
        var heartbeatMs: UInt64 = 1000
        var pool = "bench"
        var idPrefix = "nw-\(getpid())"
        /// Say BYE after this many results in total (recovery's rescuer); 0: never.
        var byeAfter = 0
        /// CURVE keys (the broker's public key, the workers' pair); nil: plaintext.
        var curve: CurveClient?
    }

    struct Job {
        let due: UInt64
        let worker: Int
        let frames: [Msg] // [header, command, id, attempt, meta, payload]
    }

    let options: Options
    let ctx: Ctx
    var sockets: [Sock] = []
    var registered: [Bool]
    var busyUntil: [UInt64]
    var jobs = MinHeap<Job>(by: { $0.due < $1.due })
    var results = 0
    var registeredCount = 0
    /// Called on this pool's thread when a BATCH arrives: (batch id, attempt, monotonic ns).
    var onBatch: ((String, UInt32, UInt64) -> Void)?
    let readyFrame: [UInt8]

    init(ctx: Ctx, options: Options) throws {
        self.ctx = ctx
        self.options = options
        registered = Array(repeating: false, count: options.count)
        busyUntil = Array(repeating: 0, count: options.count)
        readyFrame = Wire.readyJSON(pool: options.pool, credit: options.credit)
        for i in 0..<options.count {
            let s = Sock(ctx, ZMQ_DEALER)
            s.setBytes(ZMQ_ROUTING_ID, Array("\(options.idPrefix)-\(i)".utf8))
            s.setInt(ZMQ_SNDHWM, 100_000)
            s.setInt(ZMQ_RCVHWM, 100_000)
            if let curve = options.curve { try s.setCurveClient(curve) }
            try s.connect(options.backend)
            sockets.append(s)
        }
        for s in sockets { sendReady(s) }
    }

    func sendReady(_ s: Sock) {
        s.send([.shared(Wire.header), .bytes([Wire.ready]), .bytes(readyFrame)])
    }

    /// Polls until `until` (monotonic ns) or `stop()` returns true. Returns the results sent.
    @discardableResult
    func run(until: UInt64, stop: () -> Bool = { false }) -> Int {
        let poller = Poller()
        for s in sockets { _ = poller.add(s) }
        let hbNs = options.heartbeatMs * 1_000_000
        var nextHeartbeat = monoNs() + hbNs
        while true {
            var now = monoNs()
            if now >= until || stop() { break }
            var wake = min(until, nextHeartbeat, now + 50_000_000)
            if let first = jobs.min { wake = min(wake, first.due) }
            poller.poll(timeoutMs: msUntil(wake, now: now))
            for i in sockets.indices where poller.readable(i) {
                while let frames = sockets[i].receive(dontWait: true) { handle(i, frames) }
            }
            now = monoNs()
            while let first = jobs.min, first.due <= now {
                let job = jobs.popMin()!
                reply(job.worker, job.frames)
            }
            if now >= nextHeartbeat {
                for s in sockets { s.send([.shared(Wire.header), .bytes([Wire.wHeartbeat]), .bytes([])], dontWait: true) }
                nextHeartbeat = now + hbNs
            }
        }
        return results
    }

    func handle(_ i: Int, _ f: [Msg]) {
        guard f.count >= 2 else { return }
        switch f[1].u8 {
        case Wire.batch where f.count == 6:
            let now = monoNs()
            onBatch?(f[2].string, f[3].u32, now)
            if options.latencyNs == 0 {
                reply(i, f)
            } else {
                let start = max(now, busyUntil[i])
                busyUntil[i] = start + options.latencyNs
                jobs.insert(Job(due: busyUntil[i], worker: i, frames: f))
            }
        case Wire.wWelcome:
            if !registered[i] { registered[i] = true; registeredCount += 1 }
        case Wire.disconnect:
            // The broker does not know this worker (it restarted or declared it lost): register again.
            sendReady(sockets[i])
        default:
            break // HEARTBEAT, CANCEL (nothing to cancel: results leave at once or on time)
        }
    }

    /// RESULT [batch id, attempt, stats, payload]: the id, attempt and payload frames are forwarded.
    func reply(_ i: Int, _ f: [Msg]) {
        sockets[i].send([.shared(Wire.header), .bytes([Wire.wResult]), .msg(f[2]), .msg(f[3]), .shared(Wire.emptyJSON), .msg(f[5])])
        results += 1
        if options.byeAfter > 0 && results == options.byeAfter {
            sockets[i].send([.shared(Wire.header), .bytes([Wire.bye]), .bytes(Array("done".utf8))])
        }
    }

    /// Waits until every worker has its WELCOME (or the deadline passes).
    func waitRegistered(timeoutMs: UInt64) -> Bool {
        let until = monoNs() + timeoutMs * 1_000_000
        let poller = Poller()
        for s in sockets { _ = poller.add(s) }
        while registeredCount < options.count && monoNs() < until {
            poller.poll(timeoutMs: 20)
            for i in sockets.indices where poller.readable(i) {
                while let frames = sockets[i].receive(dontWait: true) { handle(i, frames) }
            }
        }
        return registeredCount == options.count
    }
}

/// A small binary min-heap.
struct MinHeap<T> {
    var items: [T] = []
    let less: (T, T) -> Bool
    init(by less: @escaping (T, T) -> Bool) { self.less = less }
    var min: T? { items.first }
    var count: Int { items.count }
    mutating func insert(_ x: T) {
        items.append(x)
        var i = items.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            if less(items[i], items[p]) { items.swapAt(i, p); i = p } else { break }
        }
    }
    mutating func popMin() -> T? {
        guard !items.isEmpty else { return nil }
        items.swapAt(0, items.count - 1)
        let out = items.removeLast()
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < items.count && less(items[l], items[m]) { m = l }
            if r < items.count && less(items[r], items[m]) { m = r }
            if m == i { break }
            items.swapAt(i, m)
            i = m
        }
        return out
    }
}

/// `compass-bench workers`: a process hosting null workers until its time is up or its parent dies.
func workersMain(_ args: Args) throws {
    dieWithParent()
    var o = NullWorkerPool.Options(backend: args.string("--backend") ?? "tcp://127.0.0.1:5556", count: args.int("--count") ?? 1)
    o.credit = args.int("--credit") ?? 2
    o.latencyNs = UInt64((args.double("--latency-ms") ?? 0) * 1_000_000)
    o.heartbeatMs = UInt64(args.int("--heartbeat-ms") ?? 1000)
    o.pool = args.string("--pool") ?? "bench"
    if let server = args.string("--curve-server-key") {
        guard let keyFile = args.string("--curve-key") else { throw BenchError("--curve-server-key needs --curve-key FILE") }
        o.curve = try CurveClient(serverKey: server, keyFile: keyFile)
    }
    let seconds = args.double("--max-seconds") ?? 60
    let ctx = Ctx(ioThreads: 1)
    let pool = try NullWorkerPool(ctx: ctx, options: o)
    let ok = pool.waitRegistered(timeoutMs: 30_000)
    print(ok ? "workers ready \(o.count)" : "workers not registered: \(pool.registeredCount)/\(o.count)")
    fflush(stdout)
    pool.run(until: monoNs() + UInt64(seconds * 1e9))
}
