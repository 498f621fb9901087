import CompassProtocol
import Foundation
import Hummingbird

/// Reading request bodies; writing responses, and errors in OpenAI's shape.
extension Gateway {
    static func json(_ value: JSON, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: ByteBuffer(bytes: value.bytes)))
    }

    /// Runs `body`; an `APIError` (or any other error, as a 500) becomes an OpenAI error response.
    func answer(_ body: () async throws -> Response) async -> Response {
        do {
            return try await body()
        } catch let error as APIError {
            return error.response
        } catch let error as any HTTPResponseError {
            return APIError(status: error.status, message: "\(error)", type: "invalid_request_error", code: nil).response
        } catch {
            logger.error("request failed: \(error)")
            return APIError(status: .internalServerError, message: "\(error)", type: "server_error", code: "internal_error").response
        }
    }

    static func tooLarge(_ limit: Int) -> APIError {
        APIError(status: .contentTooLarge, message: "The request body is larger than \(limit) bytes", type: "invalid_request_error",
                 code: "request_too_large")
    }

    /// A body that says it is larger than `limit` is refused before a byte of it is read (the
    /// connection then closes: `ConnectionGuard`).
    func checkDeclaredLength(_ request: Request, limit: Int) throws {
        if let declared = request.headers[.contentLength].flatMap({ Int($0) }), declared > limit { throw Gateway.tooLarge(limit) }
    }

    func readBody(_ request: Request, limit: Int) async throws -> ByteBuffer {
        try checkDeclaredLength(request, limit: limit)
        do {
            return try await request.body.collect(upTo: limit)
        } catch let error as any HTTPResponseError where error.status == .contentTooLarge {
            throw Gateway.tooLarge(limit)
        }
    }

    func readJSON(_ request: Request) async throws -> JSON {
        let buffer = try await readBody(request, limit: options.maxBodyBytes)
        do {
            return try JSON.parse(buffer.readableBytesView)
        } catch {
            let detail: String
            if case DecodingError.dataCorrupted(let context) = error {
                detail = (context.underlyingError.map { "\($0)" } ?? context.debugDescription)
            } else if case DecodingError.typeMismatch(_, let context) = error {
                // A number past what a double holds (1e400) reads as nothing JSON has a type for.
                let path = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
                detail = "the value at \(path.isEmpty ? "the top level" : String(path.dropFirst())) cannot be read (a number out of range?)"
            } else {
                detail = "\(error)"
            }
            throw APIError.badRequest("The request body is not valid JSON: \(detail)", code: "invalid_json")
        }
    }
}
