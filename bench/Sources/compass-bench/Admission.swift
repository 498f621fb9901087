import Foundation

#if canImport(Glibc)
import Glibc
#endif

extension Suite {
    // MARK: 6. Admission

    /// A continuous-batching engine behind one-request batches: the real `compass-worker` with the
    /// synthetic engine in its continuous mode (capacity 256, a step of 10 ms + 10 us per running
    /// sequence, completions of 8 to 24 tokens), fed by the real `compass submit --batch-size 1`.
    /// Occupancy comes from the engine's own counts (steps, and running sequences summed over them),
    /// which the worker logs every 250 ms; the steady state is from the report after 15 % of the
    /// requests were answered to the last before 85 %. Then the same behind the gateway with 256
    /// concurrent HTTP clients (`gatewayAdmission`). The ideal rate is the engine's at full
    /// occupancy: capacity / (mean tokens per request × the step time with every slot taken).
    func admission() throws {
        var rows: [[String: Any]] = []
        let capacity = 256, stepUs = 10_000, seqUs = 10
        let count = quick ? 6_000 : 20_000
        for window in (quick ? [512] : [512, 2048]) {
            let tag = "adm\(window)"
            let broker = try BrokerProc(bin: bin, dir: dir, name: "\(tag)-broker", transport: "tcp")
            defer { broker.stop() }
            let worker = try continuousWorker(broker, tag: tag, capacity: capacity, stepUs: stepUs, seqUs: seqUs)
            defer { worker.stop(signal: SIGKILL) }
            let input = "\(dir)/\(tag).jsonl"
            let meanTokens = try writeAdmissionPrompts(input, count: count)
            let started = monoNs()
            let submit = try Child([bin + "/compass", "submit", input, "--broker", broker.frontend, "--pool", "bench", "--batch-size", "1",
                                    "--window", "\(window)", "--out", "\(dir)/\(tag).out.jsonl", "--overwrite", "--quiet"],
                                   name: "\(tag)-submit", dir: dir)
            try waitToEnd(submit, started: started, what: "compass submit", output: submit.errPath)
            let row = try occupancyRow(worker: worker, started: started, count: count, capacity: capacity, stepUs: stepUs, seqUs: seqUs,
                                       meanTokens: meanTokens, window: window)
            rows.append(row)
            log("admission: capacity \(capacity), \(count) one-request batches, window \(window): \(row["summary"]!)")
        }
        rows.append(try gatewayAdmission(capacity: capacity, stepUs: stepUs, seqUs: seqUs, count: count))
        result["admission"] = rows
    }

    /// The same engine behind `compass gateway`, fed by 256 concurrent HTTP clients, each sending one
    /// `/v1/completions` request at a time (bench/gpu/loadgen.py: asyncio, one keep-alive connection
    /// per client, the GPU benchmark's clients), as lm-evaluation-harness's local-completions does.
    func gatewayAdmission(capacity: Int, stepUs: Int, seqUs: Int, count: Int) throws -> [String: Any] {
        let clients = 256
        let tag = "admgw"
        let broker = try BrokerProc(bin: bin, dir: dir, name: "\(tag)-broker", transport: "tcp")
        defer { broker.stop() }
        let worker = try continuousWorker(broker, tag: tag, capacity: capacity, stepUs: stepUs, seqUs: seqUs)
        defer { worker.stop(signal: SIGKILL) }
        let gateway = try Child([bin + "/compass", "gateway", "--broker", broker.frontend, "--listen", "127.0.0.1:0"],
                                name: "\(tag)-gateway", dir: dir)
        defer { gateway.stop(signal: SIGKILL) }
        let line = try gateway.waitLine("compass gateway")
        guard let url = line.split(separator: " ").first(where: { $0.hasPrefix("http://") }) else {
            throw BenchError("admission: no URL in the gateway's line '\(line)'")
        }
        let input = "\(dir)/\(tag).jsonl"
        let meanTokens = try writeAdmissionPrompts(input, count: count)
        // bin is <root>/.build/release: the load generator is <root>/bench/gpu/loadgen.py.
        let root = URL(fileURLWithPath: bin).deletingLastPathComponent().deletingLastPathComponent().path
        let started = monoNs()
        let clientsRun = try Child(["/usr/bin/env", "python3", root + "/bench/gpu/loadgen.py", "run", "\(url)/v1", input,
                                    "\(dir)/\(tag).report.json", "--clients", "\(clients)", "--model", "bench"],
                                   name: "\(tag)-clients", dir: dir)
        try waitToEnd(clientsRun, started: started, what: "the HTTP clients", output: clientsRun.outPath)
        let row = try occupancyRow(worker: worker, started: started, count: count, capacity: capacity, stepUs: stepUs, seqUs: seqUs,
                                   meanTokens: meanTokens, window: "gateway, \(clients) HTTP clients")
        log("admission: capacity \(capacity) behind the gateway, \(clients) HTTP clients, \(count) requests: \(row["summary"]!)")
        return row
    }

    /// A registered `compass-worker` with the synthetic engine in its continuous mode, logging its
    /// engine statistics every 250 ms.
    func continuousWorker(_ broker: BrokerProc, tag: String, capacity: Int, stepUs: Int, seqUs: Int) throws -> Child {
        let worker = try Child([bin + "/compass-worker", "--broker", broker.backend, "--pool", "bench", "--engine", "synthetic",
                                "--engine-arg", "capacity=\(capacity)", "--engine-arg", "step_us=\(stepUs)", "--engine-arg", "seq_us=\(seqUs)",
                                "--stats-interval-ms", "250"], name: "\(tag)-worker", dir: dir)
        do {
            try waitLog(worker, "registered with broker", timeoutMs: 60_000)
        } catch {
            worker.stop(signal: SIGKILL)
            throw error
        }
        return worker
    }

    /// Waits (at most 10 minutes from `started`) for a load-making child to exit 0; else kills it
    /// and throws with the end of its `output` file.
    func waitToEnd(_ child: Child, started: UInt64, what: String, output: String) throws {
        let deadline = started + 600_000_000_000
        while child.isRunning && monoNs() < deadline { usleep(20_000) }
        guard !child.isRunning, child.status == 0 else {
            child.stop(signal: SIGKILL)
            throw BenchError("\(what) did not finish cleanly (status \(child.status)): \(((try? String(contentsOfFile: output, encoding: .utf8)) ?? "").suffix(2000))")
        }
    }

    /// One row of the admission table from the worker's `engine statistics`: occupancy in the steady
    /// state (from the report after 15 % of the requests were answered to the last before 85 %) and
    /// over the whole run, requests/s against the engine's ideal (capacity / (mean tokens × the step
    /// with every slot taken)), and what a step really took (the engine sleeps for its cost; a loaded
    /// machine wakes it late: where requests/s falls short of the ideal at full occupancy, this says why).
    func occupancyRow(worker: Child, started: UInt64, count: Int, capacity: Int, stepUs: Int, seqUs: Int, meanTokens: Double,
                      window: Any) throws -> [String: Any] {
        let seconds = Double(monoNs() - started) / 1e9
        let samples = engineSamples((try? String(contentsOfFile: worker.errPath, encoding: .utf8)) ?? "")
        let steady = samples.filter { $0.completed >= count * 15 / 100 && $0.completed <= count * 85 / 100 }
        guard let first = steady.first, let last = steady.last, last.steps > first.steps else {
            throw BenchError("admission (\(window)): no engine statistics in steady state (\(samples.count) reports)")
        }
        let occupancy = Double(last.sequenceSteps - first.sequenceSteps) / Double((last.steps - first.steps) * capacity)
        let whole = samples.last.map { Double($0.sequenceSteps) / Double(max(1, $0.steps) * capacity) } ?? 0
        let nominalMs = Double(stepUs + capacity * seqUs) / 1000
        let ideal = Double(capacity) / (meanTokens * nominalMs / 1000)
        let totalSteps = samples.last?.steps ?? 0
        let stepMs = totalSteps > 0 ? seconds * 1000 / Double(totalSteps) : 0
        let summary = "occupancy \(String(format: "%.3f", occupancy)) steady (\(String(format: "%.3f", whole)) whole run), \(Int(Double(count) / seconds)) requests/s of an ideal \(Int(ideal))/s; a step took \(String(format: "%.1f", stepMs)) ms for a nominal \(nominalMs) ms"
        return ["capacity": capacity, "step_us": stepUs, "seq_us": seqUs, "requests": count, "batch_size": 1, "window": window,
                "occupancy_steady": (occupancy * 1000).rounded() / 1000, "occupancy_whole_run": (whole * 1000).rounded() / 1000,
                "steady_steps": last.steps - first.steps, "seconds": (seconds * 100).rounded() / 100,
                "requests_per_s": (Double(count) / seconds).rounded(), "ideal_requests_per_s": ideal.rounded(),
                "mean_tokens": meanTokens, "nominal_step_ms": nominalMs,
                "measured_step_ms": (stepMs * 100).rounded() / 100, "load_average": loadAverage(), "summary": summary]
    }

    /// Prompts of 30 words with completions of 8 to 24 tokens; returns the mean completion length.
    func writeAdmissionPrompts(_ path: String, count: Int) throws -> Double {
        var text = ""
        var tokens = 0
        for i in 0..<count {
            let maxTokens = 8 + (i * 5) % 17
            tokens += maxTokens
            let words = (0..<30).map { "w\($0)x\(i)" }.joined(separator: " ")
            text += #"{"custom_id":"a\#(i)","prompt":"\#(words)","max_tokens":\#(maxTokens)}"# + "\n"
        }
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return Double(tokens) / Double(count)
    }

    /// Waits until a child's stderr (where compass logs) has a line containing `text`.
    func waitLog(_ child: Child, _ text: String, timeoutMs: Int) throws {
        let until = monoNs() + UInt64(timeoutMs) * 1_000_000
        while monoNs() < until {
            if ((try? String(contentsOfFile: child.errPath, encoding: .utf8)) ?? "").contains(text) { return }
            guard child.isRunning else { throw BenchError("\(child.name) exited before logging '\(text)'") }
            usleep(10_000)
        }
        throw BenchError("\(child.name) did not log '\(text)' within \(timeoutMs) ms")
    }

    /// The worker's `engine statistics` lines: the engine's cumulative counts and batches completed.
    func engineSamples(_ log: String) -> [(steps: Int, sequenceSteps: Int, completed: Int)] {
        log.split(separator: "\n").filter { $0.contains("engine statistics") }.compactMap { line in
            var f: [String: Int] = [:]
            for token in line.split(separator: " ") {
                let parts = token.split(separator: "=", maxSplits: 1)
                if parts.count == 2, let v = Int(parts[1]) { f[String(parts[0])] = v }
            }
            guard let s = f["steps"], let q = f["sequence_steps"], let c = f["completed"] else { return nil }
            return (s, q, c)
        }
    }
}
