import CompassProtocol

/// A file of the Files API: uploaded batch input, or a batch's output or error file.
public struct FileObject: Sendable, Codable, Equatable {
    public var id: String
    public var bytes: Int
    public var createdAt: Int
    public var filename: String
    public var purpose: String

    enum CodingKeys: String, CodingKey {
        case id, bytes, createdAt = "created_at", filename, purpose
    }

    var json: JSON {
        .object([("id", .string(id)), ("object", "file"), ("bytes", .int(bytes)), ("created_at", .int(createdAt)),
                 ("filename", .string(filename)), ("purpose", .string(purpose)), ("status", "processed"),
                 ("expires_at", .null), ("status_details", .null)])
    }
}
