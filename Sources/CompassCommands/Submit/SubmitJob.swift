import CompassClient
import CompassSecurity
import CompassProtocol
import Foundation

/// How `compass submit` (and `compass demo`) cut and send a prompt file.
struct SubmitSettings: Sendable {
    var broker: String
    var pool: String
    var batchSize = 16
    /// Batches in flight at once.
    var window = 32
    var session = "s-" + UUID().uuidString.lowercased().prefix(8)
    var maxAttempts: UInt16 = 0
    var priority: Int16 = 0
    var deadlineMilliseconds: UInt32 = 0
    /// `max_tokens` for requests that do not set one.
    var defaultMaxTokens: Int?
    var showProgress = true
    /// Continue a run whose state file and results exist: same session, same batches, same ids.
    var resume = false
    var curve: CurveClientKeys?
    /// How long to wait for a worker of the pool when the broker does not know it yet.
    var poolWaitMilliseconds: UInt64 = 300_000
    /// How each batch's affinity key is set.
    var affinity: AffinityMode = .prefix
}

/// `--affinity`: `prefix` keys each batch by its first request's prompt prefix
/// (`AffinityKey`), so batches that start alike (a few-shot preamble) run on one worker; `none`
/// sends no key (round-robin placement, as before keys existed).
enum AffinityMode: String, CaseIterable, Sendable {
    case prefix, none
}

/// What a submit run did.
struct SubmitSummary: Sendable {
    var requests = 0
    var succeeded = 0
    var failed = 0
    var invalidLines = 0
    var batches = 0
    /// Batches that needed more than one dispatch.
    var retriedBatches = 0
    var promptTokens = 0
    var completionTokens = 0
    var failuresByCode: [String: Int] = [:]
    var seconds = 0.0
    var output = ""
    /// Requests already in the results file when a resumed run started.
    var resumed = 0
    /// Where the failed requests' lines were written too (nil when none failed).
    var errorsFile: String?

    var text: String {
        let rate = seconds > 0 ? Double(succeeded) / seconds : 0
        let tokenRate = seconds > 0 ? Double(completionTokens) / seconds : 0
        var lines = [
            "compass submit: \(requests) requests in \(batches) batches, \(formatDuration(seconds))",
            "  succeeded    \(succeeded)",
            "  failed       \(failed)" + (failuresByCode.isEmpty ? "" : "  (" + failuresByCode.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ") + ")"),
            "  tokens       prompt \(promptTokens), completion \(completionTokens)",
            "  throughput   \(formatRate(rate)) succeeded requests/s, \(formatRate(tokenRate)) completion tokens/s",
            "  retried      \(retriedBatches) batches needed more than one attempt",
            "  results      \(output)",
        ]
        if let errorsFile { lines.append("  errors       \(errorsFile) (the \(failed) failed requests' lines)") }
        if invalidLines > 0 { lines.insert("  invalid      \(invalidLines) input lines (written to the results with their error)", at: 3) }
        if resumed > 0 { lines.insert("  resumed      \(resumed) requests were already in the results file", at: 1) }
        return lines.joined(separator: "\n")
    }
}

enum SubmitJob {
    struct Report: Sendable {
        let ids: [String]
        let outcome: Result<BatchOutcome, ClientError>
    }

    /// Rejections that no batch of this run can get past: stop instead of failing every batch alike.
    static let fatalRejections: Set<String> = [RejectCode.unknownPool.rawValue, RejectCode.badVersion.rawValue]

    static func run(input: String, output: String, truncate: Bool, settings original: SubmitSettings) async throws -> SubmitSummary {
        let started = Date()
        var configured = original
        // A resumed run cuts the same batches under the same ids: the broker answers those it has
        // (running, or finished and not yet acknowledged) without running them again.
        var done = Set<String>()
        if configured.resume {
            let state = try SubmitState.load(for: output)
            configured.session = state.session
            configured.batchSize = state.batchSize
            done = try completedIDs(inResults: output)
        } else {
            try SubmitState(session: configured.session, batchSize: configured.batchSize, input: input, pool: configured.pool).save(for: output)
        }
        let settings = configured
        let progress = SubmitProgress()
        let total = try LineReader.countNonBlankLines(path: input)
        progress.counts.withLock { $0.total = max(0, total - done.count) }
        var clientOptions = ClientOptions(broker: settings.broker, session: settings.session)
        clientOptions.manualAck = true // acknowledged once the lines are in the file
        clientOptions.curve = settings.curve
        clientOptions.onProgress = { id, done, _ in progress.counts.withLock { $0.partial[id] = Int(done) } }
        clientOptions.onBusy = { _, _ in progress.counts.withLock { $0.busy += 1 } }
        clientOptions.unknownPoolWaitMilliseconds = settings.poolWaitMilliseconds
        let waitSeconds = settings.poolWaitMilliseconds / 1000
        clientOptions.onWaitingForPool = { pool, message in
            FileHandle.standardError.write(Data("compass submit: waiting up to \(waitSeconds) s for a worker of pool '\(pool)' to register (--wait-for-pool): \(message)\n".utf8))
        }
        let client = try CompassClient(options: clientOptions)
        defer { client.close() }
        let reader = try LineReader(path: input)
        let writer = try LineWriter(path: output, truncate: truncate && !settings.resume)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var summary = SubmitSummary()
        summary.output = output
        summary.resumed = done.count
        var seen = Set<String>()

        var errors: LineWriter?
        func write(_ result: InferenceResult) throws {
            guard !done.contains(result.customID) else { return } // already in the file from before
            let line = [UInt8](try encoder.encode(result))
            try writer.write(line: line)
            if result.error != nil {
                if errors == nil {
                    let path = (output.hasSuffix(".jsonl") ? String(output.dropLast(6)) : output) + ".errors.jsonl"
                    errors = try LineWriter(path: path, truncate: !settings.resume)
                    summary.errorsFile = path
                }
                try errors?.write(line: line)
            }
            summary.requests += 1
            if let error = result.error {
                summary.failed += 1
                summary.failuresByCode[error.code, default: 0] += 1
            } else {
                summary.succeeded += 1
                summary.promptTokens += result.promptTokens
                summary.completionTokens += result.completionTokens
            }
        }

        func handle(_ report: Report) throws {
            switch report.outcome {
            case .success(let outcome):
                progress.counts.withLock { $0.partial[outcome.batchID] = nil }
                if outcome.attempts > 1 { summary.retriedBatches += 1 }
                var byID: [String: InferenceResult] = [:]
                var failure: (code: String, message: String)?
                switch outcome.status {
                case .completed(let payload, _):
                    for r in (try? JSONDecoder().decode([InferenceResult].self, from: Data(payload))) ?? [] { byID[r.customID] = r }
                    failure = (FailureCode.engineError.rawValue, "the engine returned no result for this request")
                case .failed(let code, let message, let partial):
                    for r in (try? JSONDecoder().decode([InferenceResult].self, from: Data(partial))) ?? [] { byID[r.customID] = r }
                    failure = (code, message)
                }
                for id in report.ids {
                    try write(byID[id] ?? .failure(id, code: failure!.code, message: failure!.message))
                }
                // The lines are in the file: now the broker may forget the batch.
                try writer.flush()
                client.ack(batchID: outcome.batchID)
            case .failure(let error):
                if case .rejected(let code, let message) = error, fatalRejections.contains(code) {
                    throw CommandFailure(message: "the broker refused the batches: \(message)")
                }
                let (code, message): (String, String) = {
                    if case .rejected(let code, let message) = error { return (code, message) }
                    return ("client_error", "\(error)")
                }()
                for id in report.ids { try write(.failure(id, code: code, message: message)) }
            }
            let failedNow = summary.failed
            progress.counts.withLock { $0.done = summary.requests; $0.failed = failedNow }
        }

        let printer = settings.showProgress ? ProgressPrinter(progress: progress) : nil
        let ticker = printer.map { p in Task { await p.run() } }
        defer { ticker?.cancel() }

        try await withThrowingTaskGroup(of: Report.self) { group in
            var inflight = 0
            var batch: [InferenceRequest] = []
            func launch() async throws {
                guard !batch.isEmpty else { return }
                let requests = batch
                let batchID = "\(settings.session)-\(summary.batches)"
                summary.batches += 1
                batch.removeAll(keepingCapacity: true)
                if requests.allSatisfy({ done.contains($0.customID) }) { return } // answered in an earlier run
                group.addTask {
                    do {
                        let outcome = try await client.submit(requests, pool: settings.pool, batchID: batchID,
                                                              maxAttempts: settings.maxAttempts, priority: settings.priority,
                                                              deadlineMilliseconds: settings.deadlineMilliseconds,
                                                              affinity: settings.affinity == .prefix ? AffinityKey.of(requests) : 0)
                        return Report(ids: requests.map(\.customID), outcome: .success(outcome))
                    } catch let error as ClientError {
                        if case .unauthorized = error { throw CommandFailure(message: "\(error)") }
                        return Report(ids: requests.map(\.customID), outcome: .failure(error))
                    }
                }
                inflight += 1
                while inflight >= settings.window, let report = try await group.next() {
                    inflight -= 1
                    try handle(report)
                }
            }
            while !Task.isCancelled, let line = try reader.next() {
                guard line.contains(where: { $0 != 0x20 && $0 != 0x09 }) else { continue }
                switch InputLine.parse(line) {
                case .failure(let problem):
                    summary.invalidLines += 1
                    let id = problem.customID ?? "line-\(reader.lineNumber)"
                    FileHandle.standardError.write(Data("\(input):\(reader.lineNumber): \(problem.message)\n".utf8))
                    try write(.failure(id, code: FailureCode.badRequest.rawValue, message: "line \(reader.lineNumber): \(problem.message)"))
                case .success(var request):
                    if seen.contains(request.customID) {
                        summary.invalidLines += 1
                        FileHandle.standardError.write(Data("\(input):\(reader.lineNumber): duplicate custom_id \(request.customID)\n".utf8))
                        try write(.failure(request.customID, code: FailureCode.badRequest.rawValue,
                                           message: "line \(reader.lineNumber): duplicate custom_id; only the first line with it ran"))
                        continue
                    }
                    seen.insert(request.customID)
                    if request.maxTokens == nil && !request.isScoring { request.maxTokens = settings.defaultMaxTokens }
                    batch.append(request)
                    if batch.count >= settings.batchSize { try await launch() }
                }
            }
            if Task.isCancelled {
                for request in batch {
                    try write(.failure(request.customID, code: FailureCode.cancelled.rawValue, message: "not sent: the run was interrupted"))
                }
                batch.removeAll()
            } else {
                try await launch()
            }
            while let report = try await group.next() { try handle(report) }
            if Task.isCancelled {
                // Requests never sent still get their line.
                while let line = try reader.next() {
                    guard case .success(let request) = InputLine.parse(line), !seen.contains(request.customID) else { continue }
                    seen.insert(request.customID)
                    try write(.failure(request.customID, code: FailureCode.cancelled.rawValue, message: "not sent: the run was interrupted"))
                }
            }
        }
        try writer.flush()
        try errors?.flush()
        summary.seconds = Date().timeIntervalSince(started)
        ticker?.cancel()
        printer?.finish()
        return summary
    }
}
