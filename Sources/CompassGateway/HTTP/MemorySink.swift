/// A part's content kept in memory, up to a limit (the small fields of a form).
final class MemorySink: MultipartStream.Sink {
    let limit: Int
    let field: String
    private(set) var bytes: [UInt8] = []

    init(limit: Int, field: String) {
        self.limit = limit
        self.field = field
    }

    func write(_ chunk: ArraySlice<UInt8>) throws {
        guard bytes.count + chunk.count <= limit else {
            throw APIError.badRequest("The multipart field '\(field)' is longer than \(limit) bytes", code: "invalid_multipart", param: field)
        }
        bytes += chunk
    }
}
