import CompassProtocol
import Foundation
import Synchronization

/// One batch of the Batch API, as stored in `DATA/batches/ID.json`.
public struct BatchRecord: Sendable, Codable {
    public struct LineError: Sendable, Codable {
        public var code: String
        public var message: String
        public var line: Int?
        public var param: String?
    }

    public var id: String
    public var endpoint: String
    public var inputFileID: String
    public var completionWindow: String
    public var status: String
    public var outputFileID: String?
    public var errorFileID: String?
    public var createdAt: Int
    public var inProgressAt: Int?
    public var finalizingAt: Int?
    public var completedAt: Int?
    public var failedAt: Int?
    public var cancellingAt: Int?
    public var cancelledAt: Int?
    public var expiresAt: Int
    public var total = 0
    public var completed = 0
    public var failed = 0
    public var errors: [LineError] = []
    public var metadata: [String: String]?

    var isFinished: Bool { ["completed", "failed", "cancelled", "expired"].contains(status) }

    var json: JSON {
        func time(_ t: Int?) -> JSON { t.map { .int($0) } ?? .null }
        let errorList: JSON = errors.isEmpty ? .null : .object([
            ("object", "list"),
            ("data", .array(errors.map { e in
                .object([("code", .string(e.code)), ("message", .string(e.message)), ("param", .optional(e.param)), ("line", .optional(e.line))])
            })),
        ])
        return .object([
            ("id", .string(id)), ("object", "batch"), ("endpoint", .string(endpoint)), ("errors", errorList),
            ("input_file_id", .string(inputFileID)), ("completion_window", .string(completionWindow)), ("status", .string(status)),
            ("output_file_id", .optional(outputFileID)), ("error_file_id", .optional(errorFileID)),
            ("created_at", .int(createdAt)), ("in_progress_at", time(inProgressAt)), ("expires_at", .int(expiresAt)),
            ("finalizing_at", time(finalizingAt)), ("completed_at", time(completedAt)), ("failed_at", time(failedAt)),
            ("expired_at", .null), ("cancelling_at", time(cancellingAt)), ("cancelled_at", time(cancelledAt)),
            ("request_counts", .object([("total", .int(total)), ("completed", .int(completed)), ("failed", .int(failed))])),
            ("metadata", metadata.map { m in .object(m.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) }) } ?? .null),
        ])
    }

    enum CodingKeys: String, CodingKey {
        case id, endpoint, inputFileID = "input_file_id", completionWindow = "completion_window", status
        case outputFileID = "output_file_id", errorFileID = "error_file_id", createdAt = "created_at"
        case inProgressAt = "in_progress_at", finalizingAt = "finalizing_at", completedAt = "completed_at", failedAt = "failed_at"
        case cancellingAt = "cancelling_at", cancelledAt = "cancelled_at", expiresAt = "expires_at"
        case total, completed, failed, errors, metadata
    }
}

/// The Batch API: batches are kept in `directory`, and each one runs as a task that cuts its
/// input file into compass batches, keeps `window` of them in flight, and writes the output and
/// error files in OpenAI's Batch output format as results arrive.
final class BatchJobs: Sendable {
    struct Settings: Sendable {
        /// Requests per compass batch.
        var batchSize = 64
        /// Compass batches in flight per job.
        var window = 8
        /// Bound on a compass batch's payload, roughly.
        var maxBatchBytes = 8 << 20
    }

    let directory: String
    let files: FileStore
    let submitter: Submitter
    let directoryOfPools: PoolDirectory
    let settings: Settings
    private let records = Mutex<[String: BatchRecord]>([:])
    private let tasks = Mutex<[String: Task<Void, Never>]>([:])
    private let sequence = Atomic<UInt64>(0)

    init(directory: String, files: FileStore, pools: PoolDirectory, settings: Settings, submit: @escaping SubmitBatch) throws {
        self.directory = directory
        self.files = files
        self.directoryOfPools = pools
        self.settings = settings
        self.submitter = Submitter(submit)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var loaded: [String: BatchRecord] = [:]
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where name.hasSuffix(".json") {
            guard let data = FileManager.default.contents(atPath: "\(directory)/\(name)"),
                  var record = try? JSONDecoder().decode(BatchRecord.self, from: data) else { continue }
            if !record.isFinished {
                // Its task died with the previous gateway process.
                record.status = "failed"
                record.failedAt = now()
                record.errors.append(.init(code: "gateway_restarted", message: "the gateway stopped while this batch ran; create it again"))
            }
            loaded[record.id] = record
        }
        records.withLock { $0 = loaded }
        for record in loaded.values { save(record) }
    }

    func save(_ record: BatchRecord) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try? encoder.encode(record).write(to: URL(fileURLWithPath: "\(directory)/\(record.id).json"), options: .atomic)
    }

    func get(_ id: String) -> BatchRecord? { records.withLock { $0[id] } }

    /// Newest first.
    func list() -> [BatchRecord] {
        records.withLock { Array($0.values) }.sorted { ($0.createdAt, $0.id) > ($1.createdAt, $1.id) }
    }

    @discardableResult
    func update(_ id: String, persist: Bool = true, _ change: (inout BatchRecord) -> Void) -> BatchRecord? {
        let record: BatchRecord? = records.withLock { all in
            guard var r = all[id] else { return nil }
            change(&r)
            all[id] = r
            return r
        }
        if persist, let record { save(record) }
        return record
    }

    /// POST /v1/batches.
    func create(_ body: JSON) throws(APIError) -> BatchRecord {
        guard body.isObject else { throw .badRequest("The request body must be a JSON object") }
        let reader = FieldReader(body: body)
        let inputFileID = try reader.requiredString("input_file_id")
        let endpointText = try reader.requiredString("endpoint")
        let window = try reader.requiredString("completion_window")
        guard let endpoint = Endpoint(rawValue: endpointText) else {
            throw .badRequest("endpoint \(endpointText) is not supported: use /v1/chat/completions or /v1/completions", param: "endpoint")
        }
        guard window == "24h" else { throw .badRequest("completion_window must be '24h'", param: "completion_window") }
        guard files.get(inputFileID) != nil else {
            throw .notFound("No file with id '\(inputFileID)'", code: "file_not_found")
        }
        var metadata: [String: String]?
        if let m = body["metadata"], !m.isNull {
            guard case .object(let pairs) = m else { throw .badRequest("metadata must be an object of strings", param: "metadata") }
            var out: [String: String] = [:]
            for (k, v) in pairs {
                guard let s = v.string else { throw .badRequest("metadata values must be strings", param: "metadata") }
                out[k] = s
            }
            metadata = out
        }
        let created = now()
        let n = sequence.add(1, ordering: .relaxed).newValue
        let id = "batch_" + String(UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "").prefix(20)) + String(n, radix: 16)
        let record = BatchRecord(id: id, endpoint: endpoint.rawValue, inputFileID: inputFileID, completionWindow: window,
                                 status: "validating", createdAt: created, expiresAt: created + 86_400, metadata: metadata)
        records.withLock { $0[id] = record }
        save(record)
        let task = Task { await self.run(id: id, endpoint: endpoint, inputPath: files.contentPath(inputFileID)) }
        tasks.withLock { $0[id] = task }
        return record
    }

    /// POST /v1/batches/{id}/cancel.
    func cancel(_ id: String) throws(APIError) -> BatchRecord {
        guard let record = get(id) else { throw .notFound("No batch with id '\(id)'", code: "batch_not_found") }
        if record.status == "cancelling" || record.status == "cancelled" { return record }
        guard record.status == "validating" || record.status == "in_progress" else {
            throw APIError(status: .conflict, message: "Cannot cancel a batch with status '\(record.status)'", type: "invalid_request_error",
                           code: "batch_not_cancellable")
        }
        let updated = update(id) { r in
            r.status = "cancelling"
            r.cancellingAt = now()
        } ?? record
        tasks.withLock { $0[id] }?.cancel()
        return updated
    }

    struct ParsedLine {
        var lineNumber: Int
        var customID: String
        var call: Call
    }

    /// A compass batch being filled: whole lines of one pool.
    struct Pending {
        var lines: [ParsedLine] = []
        var requests: [InferenceRequest] = []
        var bytes = 0
    }

    struct Outcome: Sendable {
        var lines: [(Int, String, Call)]
        var results: [String: Result<InferenceResult, CompassFailure>]
    }

    func run(id: String, endpoint: Endpoint, inputPath: String) async {
        defer { _ = tasks.withLock { $0.removeValue(forKey: id) } }
        // Validation: every line must be readable before anything runs (as OpenAI does).
        let validation: (total: Int, errors: [BatchRecord.LineError])
        do {
            validation = try await validate(inputPath: inputPath, endpoint: endpoint)
        } catch {
            finishFailed(id, [.init(code: "file_unreadable", message: "\(error)")])
            return
        }
        if !validation.errors.isEmpty {
            finishFailed(id, validation.errors, total: validation.total)
            return
        }
        guard validation.total > 0 else {
            finishFailed(id, [.init(code: "empty_file", message: "the input file has no requests")])
            return
        }
        if Task.isCancelled { return finishCancelledBeforeStart(id, total: validation.total) }
        update(id) { r in
            r.status = "in_progress"
            r.inProgressAt = now()
            r.total = validation.total
        }

        let outputPath = files.scratchPath()
        let errorPath = files.scratchPath()
        do {
            let output = try LineWriter(path: outputPath)
            let errors = try LineWriter(path: errorPath)
            try await execute(id: id, endpoint: endpoint, inputPath: inputPath, output: output, errors: errors)
            try output.close()
            try errors.close()
            let cancelled = get(id)?.status == "cancelling"
            update(id) { r in
                if !cancelled { r.status = "finalizing"; r.finalizingAt = now() }
            }
            let outputFile = try files.adopt(path: outputPath, filename: "\(id)_output.jsonl", purpose: "batch_output")
            var errorFile: FileObject?
            if errors.lines > 0 {
                errorFile = try files.adopt(path: errorPath, filename: "\(id)_error.jsonl", purpose: "batch_output")
            } else {
                try? FileManager.default.removeItem(atPath: errorPath)
            }
            update(id) { r in
                r.outputFileID = outputFile.id
                r.errorFileID = errorFile?.id
                if cancelled {
                    r.status = "cancelled"
                    r.cancelledAt = now()
                } else {
                    r.status = "completed"
                    r.completedAt = now()
                }
            }
        } catch {
            try? FileManager.default.removeItem(atPath: outputPath)
            try? FileManager.default.removeItem(atPath: errorPath)
            finishFailed(id, [.init(code: "gateway_error", message: "\(error)")])
        }
    }

    func finishFailed(_ id: String, _ errors: [BatchRecord.LineError], total: Int? = nil) {
        update(id) { r in
            r.status = "failed"
            r.failedAt = now()
            r.errors = errors
            if let total { r.total = total }
        }
    }

    func finishCancelledBeforeStart(_ id: String, total: Int) {
        update(id) { r in
            r.status = "cancelled"
            r.cancelledAt = now()
            r.total = total
        }
    }

    /// Checks every line: JSON object, unique custom_id, method POST, url = the batch's endpoint,
    /// a body with a model naming a pool the broker has.
    func validate(inputPath: String, endpoint: Endpoint) async throws -> (total: Int, errors: [BatchRecord.LineError]) {
        var source = try LineSource(path: inputPath)
        defer { source.close() }
        var total = 0
        var errors: [BatchRecord.LineError] = []
        var seen = Set<String>()
        var firstLineOfModel: [String: Int] = [:]
        func problem(_ code: String, _ message: String, _ line: Int, _ param: String? = nil) {
            if errors.count < 100 { errors.append(.init(code: code, message: message, line: line, param: param)) }
        }
        while let line = try source.next() {
            guard line.contains(where: { $0 != 0x20 && $0 != 0x09 }) else { continue }
            total += 1
            let n = source.lineNumber
            guard let object = try? JSON.parse(line), object.isObject else {
                problem("invalid_json_line", "line \(n) is not a JSON object", n)
                continue
            }
            guard let customID = object["custom_id"]?.string, !customID.isEmpty else {
                problem("missing_required_parameter", "line \(n) has no custom_id (a non-empty string)", n, "custom_id")
                continue
            }
            if !seen.insert(customID).inserted {
                problem("duplicate_custom_id", "custom_id '\(customID)' appears more than once (line \(n))", n, "custom_id")
            }
            if let method = object["method"], method.string != "POST" {
                problem("invalid_method", "line \(n): method must be POST", n, "method")
            }
            if let url = object["url"]?.string, url != endpoint.rawValue {
                problem("mismatched_url", "line \(n): url \(url) is not the batch's endpoint \(endpoint.rawValue)", n, "url")
            }
            guard let body = object["body"], body.isObject else {
                problem("missing_required_parameter", "line \(n) has no body object", n, "body")
                continue
            }
            guard let model = body["model"]?.string, !model.isEmpty else {
                problem("missing_required_parameter", "line \(n): body.model is missing", n, "body.model")
                continue
            }
            if firstLineOfModel[model] == nil { firstLineOfModel[model] = n }
        }
        for (model, line) in firstLineOfModel.sorted(by: { $0.value < $1.value }) {
            if await directoryOfPools.availability(of: model) == .unknownPool {
                problem("model_not_found", "The model '\(model)' does not exist: the broker has no pool of that name", line, "body.model")
            }
        }
        return (total, errors)
    }

    func execute(id: String, endpoint: Endpoint, inputPath: String, output: LineWriter, errors: LineWriter) async throws {
        var source = try LineSource(path: inputPath)
        defer { source.close() }
        var pending: [String: Pending] = [:]
        let settings = settings
        let submitter = submitter

        func writeLine(_ line: ParsedLine, _ results: [Result<InferenceResult, CompassFailure>]) throws {
            var ok: [InferenceResult] = []
            for (i, r) in results.enumerated() {
                switch r.flatMap({ line.call.check($0, i) }) {
                case .success(let result): ok.append(result)
                case .failure(let failure):
                    try writeError(line.customID, failure)
                    return
                }
            }
            let prefix = endpoint == .chat ? "chatcmpl-" : "cmpl-"
            let body = Render.body(line.call, ok, id: Render.newID(prefix), created: now())
            try output.write(.object([
                ("id", .string(Render.newID("batch_req_"))), ("custom_id", .string(line.customID)),
                ("response", .object([("status_code", 200), ("request_id", .string(Render.newID("req_"))), ("body", body)])),
                ("error", .null),
            ]))
            update(id, persist: false) { $0.completed += 1 }
        }

        func writeError(_ customID: String, _ failure: CompassFailure) throws {
            if failure.code == FailureCode.cancelled.rawValue {
                try errors.write(.object([
                    ("id", .string(Render.newID("batch_req_"))), ("custom_id", .string(customID)), ("response", .null),
                    ("error", .object([("code", "batch_cancelled"), ("message", .string("the batch was cancelled before this request finished"))])),
                ]))
            } else {
                let error = APIError.from(failure)
                try writeError(customID, error)
            }
        }

        func writeError(_ customID: String, _ error: APIError) throws {
            try errors.write(.object([
                ("id", .string(Render.newID("batch_req_"))), ("custom_id", .string(customID)),
                ("response", .object([("status_code", .int(Int(error.status.code))), ("request_id", .string(Render.newID("req_"))),
                                      ("body", error.body)])),
                ("error", .null),
            ]))
            update(id, persist: false) { $0.failed += 1 }
        }

        func handle(_ outcome: Outcome) throws {
            for (lineNumber, customID, call) in outcome.lines {
                let results = call.requests.indices.map { k in
                    outcome.results["L\(lineNumber).\(k)"] ?? .failure(CompassFailure(code: FailureCode.engineError.rawValue, message: "no result"))
                }
                try writeLine(ParsedLine(lineNumber: lineNumber, customID: customID, call: call), results)
            }
        }

        try await withThrowingTaskGroup(of: Outcome.self) { group in
            var inflight = 0
            func launch(_ pool: String) async throws {
                guard let batch = pending.removeValue(forKey: pool), !batch.requests.isEmpty else { return }
                if Task.isCancelled {
                    for line in batch.lines {
                        try writeError(line.customID, CompassFailure(code: FailureCode.cancelled.rawValue, message: "cancelled"))
                    }
                    return
                }
                let lines = batch.lines.map { ($0.lineNumber, $0.customID, $0.call) }
                let requests = batch.requests
                group.addTask {
                    let results = await submitter.submit(pool: pool, requests: requests)
                    return Outcome(lines: lines, results: results)
                }
                inflight += 1
                while inflight >= settings.window, let outcome = try await group.next() {
                    inflight -= 1
                    try handle(outcome)
                }
            }
            while let raw = try source.next() {
                guard raw.contains(where: { $0 != 0x20 && $0 != 0x09 }) else { continue }
                guard let object = try? JSON.parse(raw), let customID = object["custom_id"]?.string, let body = object["body"] else { continue }
                if Task.isCancelled {
                    // Requests not sent yet: an error line each, so every custom_id appears once.
                    try writeError(customID, CompassFailure(code: FailureCode.cancelled.rawValue, message: "cancelled"))
                    continue
                }
                let call: Call
                do throws(APIError) {
                    call = try Call.parse(body, endpoint: endpoint)
                } catch {
                    try writeError(customID, error)
                    continue
                }
                let n = source.lineNumber
                var batch = pending[call.model] ?? Pending()
                for (k, request) in call.requests.enumerated() {
                    var r = request
                    r.customID = "L\(n).\(k)"
                    batch.requests.append(r)
                    batch.bytes += Batcher.weight(r)
                }
                batch.lines.append(ParsedLine(lineNumber: n, customID: customID, call: call))
                pending[call.model] = batch
                if batch.requests.count >= settings.batchSize || batch.bytes >= settings.maxBatchBytes {
                    try await launch(call.model)
                }
            }
            for pool in pending.keys.sorted() { try await launch(pool) }
            while let outcome = try await group.next() { try handle(outcome) }
        }
        update(id) { _ in } // persists the counts
    }
}
