import CompassProtocol

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
