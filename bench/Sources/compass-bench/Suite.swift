import CBenchZMQ
import CompassClient
import Foundation

/// `compass-bench suite`: every compass measurement, side by side, written as one JSON document.
final class Suite {
    let bin: String
    let selfPath: String
    let dir: String
    let quick: Bool
    let ctx = Ctx(ioThreads: 1)
    let warm: Double
    let dur: Double
    var result: [String: Any] = [:]
    var only: Set<String>
    /// The minimal C broker (bench/cbroker/cbroker.c, built by bench/run), for the broker-ceiling section.
    let cbroker: String?

    init(_ args: Args) throws {
        bin = args.string("--bin") ?? "../.build/release"
        selfPath = CommandLine.arguments[0].hasPrefix("/") ? CommandLine.arguments[0]
            : FileManager.default.currentDirectoryPath + "/" + CommandLine.arguments[0]
        quick = args.has("--quick")
        warm = quick ? 0.25 : 0.5
        dur = args.double("--seconds") ?? (quick ? 0.6 : 2.0)
        dir = args.string("--dir") ?? NSTemporaryDirectory() + "compass-bench-\(getpid())"
        only = Set((args.string("--only") ?? "raw,dispatch,broker-ceiling,client,latency,scaling,recovery,admission")
            .split(separator: ",").map(String.init))
        cbroker = args.string("--cbroker")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    func log(_ s: String) {
        FileHandle.standardError.write(Data("[compass-bench] \(s)\n".utf8))
    }

    // MARK: Workers

    /// Starts `count` workers against `backend`: null workers (one process each, or all in one
    /// process when `perProcess` is false) or real `compass-worker --engine synthetic` processes.
    func startWorkers(_ kind: String, count: Int, backend: String, latencyMs: Double, credit: Int = 2,
                      heartbeatMs: Int = 1000, perProcess: Bool = true, curve: Bool = false, tag: String) throws -> [Child] {
        var children: [Child] = []
        let curveArgs = curve ? ["--curve-server-key", try curveKeys().brokerPub, "--curve-key", try curveKeys().workerKey] : []
        if kind == "synthetic" {
            for i in 0..<count {
                var args = [bin + "/compass-worker", "--broker", backend, "--pool", "bench", "--engine", "synthetic",
                            "--credit", "\(credit)"]
                if latencyMs > 0 { args += ["--engine-arg", "batch_ms=\(Int(latencyMs))"] }
                children.append(try Child(args + curveArgs, name: "\(tag)-w\(i)", dir: dir))
            }
            return children
        }
        let groups = perProcess ? Array(repeating: 1, count: count) : [count]
        for (i, n) in groups.enumerated() {
            children.append(try Child([selfPath, "workers", "--backend", backend, "--count", "\(n)", "--credit", "\(credit)",
                                       "--latency-ms", "\(latencyMs)", "--heartbeat-ms", "\(heartbeatMs)", "--max-seconds", "600"] + curveArgs,
                                      name: "\(tag)-w\(i)", dir: dir))
        }
        for c in children { _ = try c.waitLine("workers ready", timeoutMs: 60_000) }
        return children
    }

    /// A tcp broker named `tag`, `count` zero-latency workers of `kind`, and a raw producer that
    /// has seen them register. `stop()` kills the workers, then the broker.
    struct Cell {
        let broker: BrokerProc
        let workers: [Child]
        let producer: RawProducer
        func stop() {
            for w in workers { w.stop(signal: SIGKILL) }
            broker.stop()
        }
    }

    func startCell(_ tag: String, kind: String = "null", count: Int = 4) throws -> Cell {
        let broker = try BrokerProc(bin: bin, dir: dir, name: "\(tag)-broker", transport: "tcp")
        do {
            let workers = try startWorkers(kind, count: count, backend: broker.backend, latencyMs: 0, tag: tag)
            do {
                let producer = try RawProducer(ctx: ctx, frontend: broker.frontend)
                try waitWorkers(producer, count)
                return Cell(broker: broker, workers: workers, producer: producer)
            } catch {
                for w in workers { w.stop(signal: SIGKILL) }
                throw error
            }
        } catch {
            broker.stop()
            throw error
        }
    }

    /// Waits until the broker's STATUS lists `count` workers.
    func waitWorkers(_ producer: RawProducer, _ count: Int, timeoutMs: UInt64 = 60_000) throws {
        let until = monoNs() + timeoutMs * 1_000_000
        while monoNs() < until {
            if let s = producer.status(), let w = s["workers"] as? [Any], w.count >= count { return }
            usleep(20_000)
        }
        throw BenchError("the broker did not see \(count) workers within \(timeoutMs) ms")
    }

    // MARK: CURVE

    /// The keys of the CURVE cells, made once per run with libzmq's zmq_curve_keypair and written as
    /// `compass keys new` writes them: the broker's pair, and one pair for the producer and one for
    /// all null workers (as `compass up` gives one key to a pool's workers), each `.pub` in the
    /// allowlist directory the broker is given.
    struct CurveKeys {
        let brokerKey, brokerPub, producers, workers, producerKey, workerKey: String
        let producer: CurveClient
    }
    private var curveKeysCache: CurveKeys?
    func curveKeys() throws -> CurveKeys {
        if let k = curveKeysCache { return k }
        let base = "\(dir)/curve"
        let broker = try CurveCert.create(name: "broker", in: base)
        let producer = try CurveCert.create(name: "bench-producer", in: "\(base)/producers")
        let worker = try CurveCert.create(name: "bench-workers", in: "\(base)/workers")
        let k = CurveKeys(brokerKey: broker.key, brokerPub: broker.pub, producers: "\(base)/producers", workers: "\(base)/workers",
                          producerKey: producer.key, workerKey: worker.key,
                          producer: try CurveClient(serverKey: broker.pub, keyFile: producer.key))
        curveKeysCache = k
        return k
    }

    /// The broker's options for CURVE with both allowlists (docs/security.md).
    func curveBrokerArgs() throws -> [String] {
        let k = try curveKeys()
        return ["--curve-secret", k.brokerKey, "--allow-producers", k.producers, "--allow-workers", k.workers]
    }

    // MARK: 1. Physical limit

    func raw() throws {
        var rows: [[String: Any]] = []
        for transport in ["tcp", "ipc"] {
            let bind = transport == "tcp" ? "tcp://127.0.0.1:*" : "ipc://\(dir)/echo.sock"
            let echo = try Child([selfPath, "echo", "--bind", bind, "--max-seconds", "600"], name: "echo-\(transport)", dir: dir)
            let endpoint = String(try echo.waitLine("echo listening ").dropFirst("echo listening ".count))
            for (size, window) in [(100, 64), (1024, 64), (65536, 64), (1 << 20, 64), (100, 1), (1024, 1)] {
                let r = try rawClosedLoop(ctx: ctx, endpoint: endpoint, size: size, window: window, warmup: warm, duration: dur)
                let rate = Double(r.roundTrips) / r.seconds
                rows.append(["transport": transport, "size": size, "window": window, "round_trips_per_s": rate.rounded(),
                             "mb_per_s": (rate * Double(size) / 1e6 * 10).rounded() / 10, "latency": summary(r.hist)])
                log("raw \(transport) \(size) B window \(window): \(Int(rate)) round trips/s, p50 \(r.hist.valueAtPercentile(50)) µs")
            }
            echo.stop()
        }
        result["raw"] = rows
    }

    // MARK: 2. Dispatch

    /// One closed-loop cell: broker, workers, a raw producer with `window` batches in flight.
    func cell(transport: String = "tcp", size: Int, workers: Int, worker: String = "null", latencyMs: Double = 0,
              journal: String? = nil, window: Int = 64, credit: Int = 2, perProcess: Bool = true, curve: Bool = false,
              warmup: Double? = nil, duration: Double? = nil, broker which: String = "compass") throws -> [String: Any] {
        let tag = "c\(UInt32.random(in: 0...UInt32.max))"
        let journalPath = journal.map { _ in "\(dir)/\(tag).journal" }
        let broker = try BrokerProc(bin: bin, dir: dir, name: "\(tag)-broker", transport: transport,
                                    journal: journalPath, journalSync: journal ?? "full", extra: curve ? try curveBrokerArgs() : [],
                                    cbroker: which == "cbroker" ? try cbrokerPath() : nil)
        defer { broker.stop() }
        let ws = try startWorkers(worker, count: workers, backend: broker.backend, latencyMs: latencyMs, credit: credit,
                                  perProcess: perProcess, curve: curve, tag: tag)
        defer { for w in ws { w.stop(signal: SIGKILL) } }
        let (payload, requests) = makePayload(bytes: size)
        let producer = try RawProducer(ctx: ctx, frontend: broker.frontend, curve: curve ? try curveKeys().producer : nil)
        try waitWorkers(producer, workers)
        // The broker's own word on the security of this cell ("curve" or "plaintext").
        let security = producer.status()?["security"] as? String ?? "unknown"
        guard security == (curve ? "curve" : "plaintext") else {
            throw BenchError("the broker reports security '\(security)' in a \(curve ? "CURVE" : "plaintext") cell")
        }
        let cpu0 = cpuSeconds(broker.child.pid), m0 = machineCPU(), start = monoNs()
        let wcpu0 = ws.reduce(0) { $0 + cpuSeconds($1.pid) }, self0 = cpuSeconds(getpid())
        let o = producer.closedLoop(payload: StaticBytes(payload), meta: StaticBytes(Wire.meta(requests: UInt32(requests))),
                                    window: window, warmup: warmup ?? warm, duration: duration ?? dur)
        let cpu1 = cpuSeconds(broker.child.pid), m1 = machineCPU()
        let wcpu1 = ws.reduce(0) { $0 + cpuSeconds($1.pid) }, self1 = cpuSeconds(getpid())
        let elapsed = Double(monoNs() - start) / 1e9
        let rate = o.seconds > 0 ? Double(o.completed) / o.seconds : 0
        var row: [String: Any] = [
            "transport": transport, "size": size, "payload_bytes": payload.count, "requests_per_batch": requests,
            "workers": workers, "worker": worker, "latency_ms": latencyMs, "window": window, "credit": credit,
            "journal": journal ?? "none", "batches_per_s": (rate * 100).rounded() / 100, "requests_per_s": (rate * Double(requests)).rounded(),
            "mb_per_s": (rate * Double(payload.count) / 1e6 * 10).rounded() / 10, "latency": summary(o.hist),
            "broker_cpu_percent": ((cpu1 - cpu0) / elapsed * 1000).rounded() / 10,
            "machine_busy_percent": ((m1.busy - m0.busy) / max(0.001, m1.total - m0.total) * 1000).rounded() / 10,
            "workers_cpu_percent": ((wcpu1 - wcpu0) / elapsed * 1000).rounded() / 10,
            "producer_cpu_percent": ((self1 - self0) / elapsed * 1000).rounded() / 10,
            "load_average": loadAverage(),
            "busy_retries": producer.busyRetries, "failures": producer.failures, "security": security,
            "unexpected_results": producer.unexpected, "broker": which,
        ]
        if curve { row["curve_refusals"] = producer.status()?["curve_refusals"] ?? -1 }
        broker.stop()
        if let journalPath {
            row["journal_bytes"] = fileSize(journalPath)
            row["journal_wal_bytes"] = fileSize(journalPath + "-wal")
            for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: journalPath + suffix) }
        }
        return row
    }

    func dispatch() throws {
        var rows: [[String: Any]] = []
        let sizes = [1024, 65536, 1 << 20]
        let workerCounts = quick ? [1, 4] : [1, 4, 16]
        // BENCH_CELLS=tcp/1024/4/none,... runs only those cells (for profiling).
        let filter = ProcessInfo.processInfo.environment["BENCH_CELLS"].map { Set($0.split(separator: ",").map(String.init)) }
        func run(_ transport: String, _ size: Int, _ w: Int, _ journal: String?, worker: String = "null", credit: Int = 2,
                 window: Int? = nil, curve: Bool = false) throws {
            if let filter, !filter.contains("\(transport)/\(size)/\(w)/\(journal ?? "none")\(curve ? "/curve" : "")") { return }
            let row = try cell(transport: transport, size: size, workers: w, worker: worker, journal: journal,
                               window: window ?? max(64, 4 * w), credit: credit, curve: curve)
            rows.append(row)
            log("dispatch \(transport) \(size) B \(w)×\(worker) credit \(credit) window \(row["window"]!) journal=\(journal ?? "none")\(curve ? " CURVE" : ""): \(row["batches_per_s"]!) batches/s, broker CPU \(row["broker_cpu_percent"]!)%")
        }
        // CURVE (docs/security.md: broker key, producer and worker allowlists), tcp: each cell runs
        // right after its plaintext twin, so that both see the same machine.
        let curveCells: Set<String> = quick ? ["1024/4"] : ["1024/1", "1024/4", "\(1 << 20)/1", "\(1 << 20)/4"]
        for transport in ["tcp", "ipc"] {
            for size in sizes {
                for w in workerCounts {
                    try run(transport, size, w, nil)
                    if transport == "tcp" && curveCells.contains("\(size)/\(w)") { try run(transport, size, w, nil, curve: true) }
                }
            }
        }
        for journal in ["full", "normal"] {
            for size in (quick ? [1024, 1 << 20] : sizes) { for w in workerCounts { try run("tcp", size, w, journal) } }
        }
        for w in workerCounts { try run("tcp", 1024, w, nil, worker: "synthetic") }
        // Sensitivity: more credit per worker (more batches the broker may complete per poll turn).
        for credit in (quick ? [16] : [8, 32]) { try run("tcp", 1024, 4, nil, credit: credit) }
        // Sensitivity: more batches held by the broker (a deeper queue) at the same worker count.
        for window in (quick ? [1024] : [256, 1024, 4096]) { try run("tcp", 1024, 4, nil, window: window) }
        result["dispatch"] = rows
    }

    // MARK: 2c. A ceiling for the broker

    func cbrokerPath() throws -> String {
        guard let cbroker, FileManager.default.isExecutableFile(atPath: cbroker) else {
            throw BenchError("no C broker: pass --cbroker PATH (bench/run builds bench/cbroker/cbroker.c)")
        }
        return cbroker
    }

    /// compass-broker against the minimal C broker of bench/cbroker (the same wire protocol, FIFO and
    /// credit, nothing else): the same null workers and raw producer drive both, one-request 1 KiB
    /// batches, tcp, 4 workers, at a few credit/window settings. Each setting alternates the two
    /// brokers (compass first in even rounds, the C broker first in odd ones) so that both see the
    /// same machine, and reports the median of the rounds (3; 1 with --quick). Before measuring, each broker carries a few thousand batches that must all come
    /// back exactly once.
    func brokerCeiling() throws {
        let cb = try cbrokerPath()
        var checks: [[String: Any]] = []
        for which in ["compass", "cbroker"] {
            let broker = try BrokerProc(bin: bin, dir: dir, name: "once-\(which)", transport: "tcp", cbroker: which == "cbroker" ? cb : nil)
            defer { broker.stop() }
            let ws = try startWorkers("null", count: 4, backend: broker.backend, latencyMs: 0, tag: "once-\(which)")
            defer { for w in ws { w.stop(signal: SIGKILL) } }
            let producer = try RawProducer(ctx: ctx, frontend: broker.frontend)
            try waitWorkers(producer, 4)
            let (payload, requests) = makePayload(bytes: 1024)
            var check = producer.exactlyOnce(payload: StaticBytes(payload), meta: StaticBytes(Wire.meta(requests: UInt32(requests))),
                                             count: quick ? 5_000 : 20_000, window: 64)
            check["broker"] = which
            checks.append(check)
            log("exactly once through \(which): \(check["answered_once"]!) of \(check["batches"]!) batches answered once; problems: \(check["problems"]!)")
        }
        var rows: [[String: Any]] = []
        let settings: [(credit: Int, window: Int)] = quick ? [(2, 64), (8, 64)] : [(2, 64), (8, 64), (32, 256), (2, 1024)]
        let rounds = quick ? 1 : 3
        for (credit, window) in settings {
            var cells: [String: [[String: Any]]] = ["compass": [], "cbroker": []]
            for round in 0..<rounds {
                for which in (round % 2 == 0 ? ["compass", "cbroker"] : ["cbroker", "compass"]) {
                    var row = try cell(size: 1024, workers: 4, window: window, credit: credit, broker: which)
                    // The broker's CPU per batch, steadier than its rate when other tenants take CPU from the run.
                    let rate = row["batches_per_s"] as? Double ?? 0, cpu = row["broker_cpu_percent"] as? Double ?? 0
                    row["broker_cpu_us_per_batch"] = rate > 0 ? (cpu * 1e4 / rate * 10).rounded() / 10 : 0
                    cells[which]!.append(row)
                    log("ceiling credit \(credit) window \(window) \(which): \(row["batches_per_s"]!) batches/s, broker CPU \(row["broker_cpu_percent"]!)%, machine \(row["machine_busy_percent"]!)%")
                }
            }
            // The median of the rounds: one cell that another tenant of the machine slowed down moves it least.
            func median(_ which: String, _ key: String) -> Double {
                let v = cells[which]!.map { ($0[key] as? Double) ?? 0 }.sorted()
                guard !v.isEmpty else { return 0 }
                return v.count % 2 == 1 ? v[v.count / 2] : (v[v.count / 2 - 1] + v[v.count / 2]) / 2
            }
            let c = median("compass", "batches_per_s"), m = median("cbroker", "batches_per_s")
            rows.append(["credit": credit, "window": window, "size": 1024, "workers": 4, "rounds": rounds,
                         "compass_batches_per_s": c.rounded(), "cbroker_batches_per_s": m.rounded(),
                         "ratio": m > 0 ? (c / m * 1000).rounded() / 1000 : 0,
                         "compass_broker_cpu_percent": median("compass", "broker_cpu_percent"),
                         "cbroker_broker_cpu_percent": median("cbroker", "broker_cpu_percent"),
                         "compass_cpu_us_per_batch": median("compass", "broker_cpu_us_per_batch"),
                         "cbroker_cpu_us_per_batch": median("cbroker", "broker_cpu_us_per_batch"),
                         "cells": cells["compass"]! + cells["cbroker"]!])
            log("ceiling credit \(credit) window \(window): compass \(Int(c)) / C broker \(Int(m)) batches/s = \(m > 0 ? String(format: "%.3f", c / m) : "-")")
        }
        result["broker_ceiling"] = ["exactly_once": checks, "rows": rows]
        if let bad = checks.first(where: { !($0["ok"] as? Bool ?? false) }) {
            throw BenchError("a batch was lost or answered twice through \(bad["broker"]!): \(bad["problems"]!)")
        }
    }

    // MARK: CompassClient

    /// The same closed loop through the CompassClient library (async API), 4 null workers.
    func client() throws {
        var rows: [[String: Any]] = []
        for size in [1024, 1 << 20] {
            let tag = "cl\(size)"
            let cell = try startCell(tag)
            defer { cell.stop() }
            let broker = cell.broker
            let (payload, requests) = makePayload(bytes: size)
            let client = try CompassClient(options: ClientOptions(broker: broker.frontend, session: "bench-client-\(getpid())"))
            let window = 64, warmup = warm, duration = dur
            let box = CountBox()
            let done = DispatchSemaphore(value: 0)
            Task.detached {
                let t0 = monoNs()
                let from = t0 + UInt64(warmup * 1e9), to = from + UInt64(duration * 1e9)
                await withTaskGroup(of: Void.self) { group in
                    var next = 0
                    func add() {
                        next += 1
                        let id = "cl-\(size)-\(next)"
                        group.addTask {
                            _ = try? await client.submit(batchID: id, pool: "bench", payload: payload) // meta: the broker counts the requests
                            let t = monoNs()
                            if t >= from && t < to { box.add() }
                        }
                    }
                    for _ in 0..<window { add() }
                    while await group.next() != nil {
                        if monoNs() < to { add() }
                    }
                }
                done.signal()
            }
            done.wait()
            client.close()
            let rate = Double(box.value) / duration
            rows.append(["size": size, "workers": 4, "window": window, "batches_per_s": rate.rounded(),
                         "requests_per_s": (rate * Double(requests)).rounded()])
            log("CompassClient \(size) B: \(Int(rate)) batches/s")
        }
        result["client"] = rows
    }

    // MARK: 3. Latency

    func latency() throws {
        var out: [String: Any] = [:]
        let (payload, requests) = makePayload(bytes: 1024)
        let p = StaticBytes(payload), meta = StaticBytes(Wire.meta(requests: UInt32(requests)))
        do {
            let cell = try startCell("lat")
            defer { cell.stop() }
            let broker = cell.broker, producer = cell.producer
            // Idle latency, interleaved in blocks with the raw libzmq echo (same payload, same
            // transport) so that both see the same interference from anything else on the machine.
            let echo = try Child([selfPath, "echo", "--bind", "tcp://127.0.0.1:*", "--max-seconds", "600"], name: "lat-echo", dir: dir)
            defer { echo.stop() }
            let pinger = try RawPinger(ctx: ctx, endpoint: String(try echo.waitLine("echo listening ").dropFirst("echo listening ".count)),
                                       size: payload.count)
            var rawIdle = newHist(), idle = newHist()
            pinger.ping(200, into: &rawIdle)
            _ = producer.pingPong(payload: p, meta: meta, count: 200, warmup: 0)
            rawIdle = newHist()
            let blocks = 20, total = quick ? 1000 : 5000
            for _ in 0..<blocks {
                pinger.ping(total / blocks, into: &rawIdle)
                idle.add(producer.pingPong(payload: p, meta: meta, count: total / blocks, warmup: 0))
            }
            out["idle"] = summary(idle)
            out["idle_raw_interleaved"] = summary(rawIdle)
            log("latency idle: p50 \(idle.valueAtPercentile(50)) µs p99 \(idle.valueAtPercentile(99)) µs; raw echo interleaved: p50 \(rawIdle.valueAtPercentile(50)) µs p99 \(rawIdle.valueAtPercentile(99)) µs")
            let sat = producer.closedLoop(payload: p, meta: meta, window: 64, warmup: warm, duration: dur)
            let saturation = Double(sat.completed) / max(sat.seconds, 1)
            out["saturation_batches_per_s"] = saturation.rounded()
            out["saturation_latency"] = summary(sat.hist)
            usleep(200_000)
            var loads: [[String: Any]] = []
            for fraction in (ProcessInfo.processInfo.environment["BENCH_FRACTIONS"].map { $0.split(separator: ",").compactMap { Double($0) } } ?? [0.5, 0.9]) {
                let r = producer.openLoop(payload: p, meta: meta, rate: fraction * saturation, warmup: warm,
                                          duration: quick ? 1.0 : 4.0)
                loads.append(["fraction": fraction, "offered_per_s": (fraction * saturation).rounded(),
                              "achieved_per_s": r.achieved.rounded(), "latency": summary(r.hist)])
                log("latency at \(Int(fraction * 100))% (\(Int(fraction * saturation))/s, achieved \(Int(r.achieved))/s, \(r.hist.totalCount) samples): p50 \(r.hist.valueAtPercentile(50)) µs p99 \(r.hist.valueAtPercentile(99)) µs")
                usleep(200_000)
            }
            out["loaded"] = loads
            // Overload: offered above saturation, open loop, while a second connection samples STATUS.
            let monitor = StatusMonitor(ctx: ctx, frontend: broker.frontend, everyMs: 200)
            let over = producer.openLoop(payload: p, meta: meta, rate: 1.5 * saturation, warmup: 0, duration: quick ? 1.5 : 3.0)
            let samples = monitor.stop()
            out["overload"] = ["offered_per_s": (1.5 * saturation).rounded(), "results_per_s_while_offered": over.achieved.rounded(),
                               "latency": summary(over.hist), "status_samples": samples]
            log("overload at 150% (\(Int(1.5 * saturation))/s): \(Int(over.achieved)) results/s while offered; broker samples: \(samples.map { "\($0["queued"] ?? 0)q/\($0["completed"] ?? 0)c" }.joined(separator: " "))")
        }
        do {
            let cell = try startCell("lat2", kind: "synthetic", count: 1)
            defer { cell.stop() }
            let producer = cell.producer
            let idle = producer.pingPong(payload: p, meta: meta, count: quick ? 500 : 2000, warmup: 100)
            out["idle_synthetic_worker"] = summary(idle)
            log("latency idle, compass-worker synthetic: p50 \(idle.valueAtPercentile(50)) µs p99 \(idle.valueAtPercentile(99)) µs")
        }
        result["latency"] = out
    }

    // MARK: 4. Scaling

    func scaling() throws {
        var rows: [[String: Any]] = []
        // 64 workers is the target's cell: measured three times (the median is reported), since other
        // tenants of a shared machine can take CPU from one run.
        var plan: [(w: Int, ms: Double)] = (quick ? [1, 4, 16, 64] : [1, 2, 4, 8, 16, 32, 64, 64, 64]).map { ($0, 20) }
        plan += [(1000, 20)]
        if !quick { plan += [(1000, 200)] }
        // BENCH_SCALING=64:20,1000:20 runs only those (workers:ms) cells.
        if let custom = ProcessInfo.processInfo.environment["BENCH_SCALING"] {
            plan = custom.split(separator: ",").compactMap { item in
                let p = item.split(separator: ":")
                guard p.count == 2, let w = Int(p[0]), let ms = Double(p[1]) else { return nil }
                return (w, ms)
            }
        }
        for (w, ms) in plan {
            let row = try cell(size: 1024, workers: w, latencyMs: ms, window: 4 * w, perProcess: w <= 64,
                               warmup: quick ? 0.5 : 1.0, duration: quick ? 1.0 : (w > 64 ? 3.0 : 5.0))
            var r = row
            let ideal = Double(w) / (ms / 1000)
            r["ideal_batches_per_s"] = ideal
            r["efficiency"] = ((row["batches_per_s"] as! Double) / ideal * 10000).rounded() / 10000
            r["processes"] = w <= 64 ? w : 1
            rows.append(r)
            log("scaling \(w) workers × \(ms) ms: \(row["batches_per_s"]!) / \(Int(ideal)) batches/s = \(r["efficiency"]!); CPU broker \(row["broker_cpu_percent"]!)% workers \(row["workers_cpu_percent"]!)% producer \(row["producer_cpu_percent"]!)% machine \(row["machine_busy_percent"]!)%, load \(row["load_average"]!)")
        }
        result["scaling"] = rows
    }

    // MARK: 5. Recovery

    func recovery() throws {
        var rows: [[String: Any]] = []
        let (payload, requests) = makePayload(bytes: 1024)
        let p = StaticBytes(payload), meta = StaticBytes(Wire.meta(requests: UInt32(requests)))
        for (hb, reps) in [(100, quick ? 3 : 10), (1000, quick ? 2 : 5)] {
            let broker = try BrokerProc(bin: bin, dir: dir, name: "rec\(hb)-broker", transport: "tcp", heartbeatMs: hb)
            defer { broker.stop() }
            let producer = try RawProducer(ctx: ctx, frontend: broker.frontend)
            var samples: [[String: Any]] = []
            for rep in 0..<reps {
                let victim = try Child([bin + "/compass-worker", "--broker", broker.backend, "--pool", "bench", "--engine", "synthetic",
                                        "--engine-arg", "batch_ms=600000", "--credit", "1"], name: "rec\(hb)-victim\(rep)", dir: dir)
                defer { victim.stop(signal: SIGKILL) }
                try waitWorkers(producer, 1)
                producer.submit(p, meta, now: monoNs())
                let batchID = "\(producer.session)-\(producer.seq)"
                // Wait until the victim runs it.
                var running = false
                let until = monoNs() + 10_000_000_000
                while !running && monoNs() < until {
                    if let s = producer.status(), let sched = s["scheduler"] as? [String: Any],
                       let workers = sched["workers"] as? [[String: Any]] {
                        running = workers.contains { ($0["running"] as? [String])?.contains(batchID) ?? false }
                    }
                    if !running { usleep(5_000) }
                }
                guard running else { throw BenchError("recovery: batch \(batchID) never ran on the victim") }
                // The rescuer: a null worker (credit 1) that records when the batch reaches it, says BYE after it.
                let shared = RescueState()
                let registered = DispatchSemaphore(value: 0)
                let backend = broker.backend, ctx = self.ctx
                let thread = Thread {
                    var o = NullWorkerPool.Options(backend: backend, count: 1)
                    o.credit = 1
                    o.heartbeatMs = UInt64(hb)
                    o.byeAfter = 1
                    o.idPrefix = "rescuer-\(hb)-\(rep)"
                    guard let pool = try? NullWorkerPool(ctx: ctx, options: o) else { registered.signal(); return }
                    pool.onBatch = { id, attempt, t in if id == batchID { shared.set(t, attempt) } }
                    _ = pool.waitRegistered(timeoutMs: 10_000)
                    registered.signal()
                    pool.run(until: monoNs() + 30_000_000_000, stop: { shared.stopped })
                }
                thread.start()
                registered.wait()
                usleep(useconds_t(UInt32.random(in: 0..<UInt32(hb)) * 1000)) // a random phase of the heartbeat
                let t0 = monoNs()
                kill(victim.pid, SIGKILL)
                var t2: UInt64 = 0
                let poller = Poller()
                _ = poller.add(producer.sock)
                let giveUp = t0 + UInt64(hb) * 10_000_000 + 5_000_000_000
                while t2 == 0 && monoNs() < giveUp {
                    poller.poll(timeoutMs: 50)
                    while let f = producer.sock.receive(dontWait: true) {
                        if f.count >= 3, f[1].u8 == Wire.result || f[1].u8 == Wire.failed, f[2].string == batchID {
                            t2 = monoNs()
                            producer.ack(f[2])
                        }
                    }
                }
                shared.stop()
                while !thread.isFinished { usleep(1_000) }
                let (t1, attempt) = shared.value
                guard t1 > 0, t2 > 0 else { throw BenchError("recovery: batch \(batchID) was not re-dispatched (heartbeat \(hb) ms)") }
                samples.append(["redispatch_ms": Double(t1 - t0) / 1e6, "complete_ms": Double(t2 - t0) / 1e6, "attempt": attempt])
                log("recovery hb \(hb) ms: re-dispatched after \(String(format: "%.1f", Double(t1 - t0) / 1e6)) ms, completed after \(String(format: "%.1f", Double(t2 - t0) / 1e6)) ms")
                usleep(50_000)
            }
            func stats(_ key: String) -> [String: Any] {
                let v = samples.map { $0[key] as! Double }.sorted()
                return ["min": v.first!, "median": v[v.count / 2], "max": v.last!, "mean": v.reduce(0, +) / Double(v.count)]
            }
            rows.append(["heartbeat_ms": hb, "liveness": 3, "samples": samples,
                         "redispatch_ms": stats("redispatch_ms"), "complete_ms": stats("complete_ms")])
        }
        result["recovery"] = rows
    }

    // MARK: Run

    func run(outPath: String) throws {
        let started = Date()
        result["machine"] = machineInfo()
        result["quick"] = quick
        result["seconds_per_cell"] = dur
        result["load_average_before"] = loadAverage()
        let sections: [(String, () throws -> Void)] = [("raw", raw), ("dispatch", dispatch), ("broker-ceiling", brokerCeiling), ("client", client),
                                                       ("latency", latency), ("scaling", scaling), ("recovery", recovery),
                                                       ("admission", admission)]
        for (name, body) in sections where only.contains(name) {
            let t = Date()
            log("== \(name)")
            let m0 = machineCPU()
            do { try body() } catch {
                log("\(name) FAILED: \(error)")
                result["\(name)_error"] = "\(error)"
            }
            let m1 = machineCPU()
            result["\(name)_seconds"] = (Date().timeIntervalSince(t) * 10).rounded() / 10
            result["\(name)_machine_busy_percent"] = ((m1.busy - m0.busy) / max(0.001, m1.total - m0.total) * 1000).rounded() / 10
        }
        result["load_average_after"] = loadAverage()
        result["suite_seconds"] = (Date().timeIntervalSince(started) * 10).rounded() / 10
        let data = try JSONSerialization.data(withJSONObject: result, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: URL(fileURLWithPath: outPath))
        Child.stopAll()
        try? FileManager.default.removeItem(atPath: dir)
    }

    func machineInfo() -> [String: Any] {
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let model = cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }?
            .split(separator: ":", maxSplits: 1).last?.trimmingCharacters(in: .whitespaces) ?? "unknown"
        var u = utsname()
        uname(&u)
        let release = withUnsafeBytes(of: &u.release) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
        return ["nproc": ProcessInfo.processInfo.activeProcessorCount, "cpu_model": model, "kernel": release,
                "memory_gib": Int(ProcessInfo.processInfo.physicalMemory >> 30), "libzmq": zmqVersion()]
    }
}

final class CountBox: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func add() { lock.lock(); n += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return n }
}

final class RescueState: @unchecked Sendable {
    private let lock = NSLock()
    private var t: UInt64 = 0
    private var attempt: UInt32 = 0
    private var stopFlag = false
    func set(_ time: UInt64, _ a: UInt32) { lock.lock(); if t == 0 { t = time; attempt = a }; lock.unlock() }
    var value: (UInt64, UInt32) { lock.lock(); defer { lock.unlock() }; return (t, attempt) }
    func stop() { lock.lock(); stopFlag = true; lock.unlock() }
    var stopped: Bool { lock.lock(); defer { lock.unlock() }; return stopFlag }
}

/// Samples the broker's STATUS (queued, running, completed of pool "bench") from its own
/// connection on its own thread, until stopped.
final class StatusMonitor: @unchecked Sendable {
    private let lock = NSLock()
    private var samples: [[String: Any]] = []
    private var done = false
    private let thread: Thread

    init(ctx: Ctx, frontend: String, everyMs: Int) {
        let box = Box()
        thread = Thread {
            guard let p = try? RawProducer(ctx: ctx, frontend: frontend, session: "monitor-\(getpid())") else { return }
            let t0 = monoNs()
            while !box.monitor!.stopped {
                if let s = p.status(), let sched = s["scheduler"] as? [String: Any],
                   let pools = sched["pools"] as? [[String: Any]], let pool = pools.first(where: { $0["name"] as? String == "bench" }) {
                    let counters = pool["counters"] as? [String: Any] ?? [:]
                    box.monitor!.add(["t_ms": Int((monoNs() - t0) / 1_000_000), "queued": pool["queued_batches"] ?? 0,
                                      "running": pool["running_batches"] ?? 0, "completed": counters["completed"] ?? 0])
                }
                usleep(useconds_t(everyMs * 1000))
            }
        }
        box.monitor = self
        thread.start()
    }

    final class Box: @unchecked Sendable { weak var monitor: StatusMonitor? }

    var stopped: Bool { lock.lock(); defer { lock.unlock() }; return done }
    func add(_ s: [String: Any]) { lock.lock(); samples.append(s); lock.unlock() }
    func stop() -> [[String: Any]] {
        lock.lock(); done = true; lock.unlock()
        while !thread.isFinished { usleep(1_000) }
        lock.lock(); defer { lock.unlock() }; return samples
    }
}
