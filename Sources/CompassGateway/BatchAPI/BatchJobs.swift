import CompassProtocol
import Foundation
import Synchronization

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
}
