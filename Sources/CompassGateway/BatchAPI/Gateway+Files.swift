import CompassProtocol
import Foundation
import Hummingbird

/// The Files API's handlers (the files themselves: `FileStore`).
extension Gateway {
    func file(_ id: String?) throws -> FileObject {
        guard let id, let file = files.get(id) else { throw APIError.notFound("No file with id '\(id ?? "")'", code: "file_not_found") }
        return file
    }

    /// POST /v1/files: multipart with `file` and `purpose`. The body is read as it arrives and the
    /// `file` part written straight to disk, so an upload holds a chunk in memory, not the file.
    func upload(_ request: Request) async throws -> Response {
        guard let contentType = request.headers[.contentType], let boundary = Multipart.boundary(contentType) else {
            throw APIError.badRequest("POST /v1/files takes multipart/form-data with the fields 'file' and 'purpose'", code: "invalid_content_type")
        }
        let limit = options.maxUploadBytes
        try checkDeclaredLength(request, limit: limit)
        let scratch = files.scratchPath()
        var stored = false
        defer { if !stored { try? FileManager.default.removeItem(atPath: scratch) } }
        var file: FileSink?
        var filename: String?
        var purpose: MemorySink?
        var parser = MultipartStream(boundary: boundary, open: { head in
            switch head.name {
            case "file" where file == nil:
                let sink = try FileSink(path: scratch)
                file = sink
                filename = head.filename
                return sink
            case "purpose" where purpose == nil:
                let sink = MemorySink(limit: 1024, field: "purpose")
                purpose = sink
                return sink
            default:
                return nil  // other fields are read past
            }
        }, close: { _, sink in (sink as? FileSink)?.close() })
        defer { file?.close() }
        var received = 0
        for try await chunk in request.body {
            received += chunk.readableBytes
            guard received <= limit else { throw Gateway.tooLarge(limit) }
            try parser.feed(chunk.readableBytesView)
        }
        try parser.finish()
        guard let file else {
            throw APIError.badRequest("Missing the 'file' field", code: "missing_field", param: "file")
        }
        guard let purposePart = purpose else {
            throw APIError.badRequest("Missing the 'purpose' field", code: "missing_field", param: "purpose")
        }
        let purposeText = String(decoding: purposePart.bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard purposeText == "batch" else {
            throw APIError.badRequest("purpose '\(purposeText)' is not supported: the gateway keeps files for the Batch API (purpose=batch)",
                                      param: "purpose")
        }
        file.close()
        let object = try files.adopt(path: scratch, filename: filename ?? "upload.jsonl", purpose: purposeText)
        stored = true
        logger.info("stored \(object.id) (\(object.filename), \(object.bytes) bytes)")
        return Gateway.json(object.json)
    }
}
