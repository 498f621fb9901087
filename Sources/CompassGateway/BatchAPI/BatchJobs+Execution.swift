import CompassProtocol
import Foundation

/// A batch's lines sent as compass batches, their answers written to the output and error files.
extension BatchJobs {
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
