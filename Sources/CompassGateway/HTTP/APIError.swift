import CompassProtocol
import Foundation
import Hummingbird

/// An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
public struct APIError: Error, Sendable, CustomStringConvertible {
    public var status: HTTPResponse.Status
    public var message: String
    public var type: String
    public var code: String?
    public var param: String?
    /// For 429 and 503: when to try again (sent as `retry-after-ms` and `retry-after`).
    public var retryAfterMilliseconds: UInt32?

    public init(status: HTTPResponse.Status, message: String, type: String, code: String? = nil, param: String? = nil,
                retryAfterMilliseconds: UInt32? = nil) {
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.retryAfterMilliseconds = retryAfterMilliseconds
    }

    public var description: String { "\(status.code) \(code ?? type): \(message)" }

    public static func badRequest(_ message: String, code: String? = "invalid_request", param: String? = nil) -> APIError {
        APIError(status: .badRequest, message: message, type: "invalid_request_error", code: code, param: param)
    }

    public static func notFound(_ message: String, code: String = "not_found") -> APIError {
        APIError(status: .notFound, message: message, type: "invalid_request_error", code: code)
    }

    public static func modelNotFound(_ model: String) -> APIError {
        APIError(status: .notFound,
                 message: "The model '\(model)' does not exist: a model is a compass pool, and the broker has no pool of that name (GET /v1/models lists them)",
                 type: "invalid_request_error", code: "model_not_found", param: "model")
    }

    public static let unauthorized = APIError(
        status: .unauthorized, message: "Missing or incorrect API key: send the header 'Authorization: Bearer <key>' with the key the gateway was started with",
        type: "authentication_error", code: "invalid_api_key")

    public var body: JSON {
        .object([("error", .object([
            ("message", .string(message)), ("type", .string(type)), ("param", .optional(param)), ("code", .optional(code)),
        ]))])
    }

    public var response: Response {
        var headers: HTTPFields = [.contentType: "application/json"]
        if let ms = retryAfterMilliseconds {
            headers[FieldName("retry-after-ms")!] = String(ms)
            headers[.retryAfter] = String(max(1, (Int(ms) + 999) / 1000))
        }
        return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: body.bytes)))
    }

    /// The HTTP error for a compass failure code (a REJECTED code, a FAILED code, or a request's own error).
    public static func from(_ failure: CompassFailure) -> APIError {
        let code = failure.code
        let message = failure.message
        switch code {
        case RejectCode.busy.rawValue:
            return APIError(status: .tooManyRequests, message: "The pool is full: \(message)", type: "rate_limit_error", code: "pool_busy",
                            retryAfterMilliseconds: failure.retryAfterMilliseconds ?? 250)
        case RejectCode.unknownPool.rawValue:
            return APIError(status: .notFound, message: message, type: "invalid_request_error", code: "model_not_found", param: "model")
        case RejectCode.tooLarge.rawValue:
            return APIError(status: .badRequest, message: "The request is too large for the pool: \(message)", type: "invalid_request_error", code: "too_large")
        case FailureCode.badRequest.rawValue, RejectCode.badPayload.rawValue:
            return APIError(status: .badRequest, message: message, type: "invalid_request_error", code: "bad_request")
        case CompassFailure.unsupportedCode:
            // 400, not 5xx: the openai package retries 5xx, and asking again cannot help.
            return APIError(status: .badRequest, message: message, type: "invalid_request_error", code: code)
        case FailureCode.timeout.rawValue, CompassFailure.deadlineCode:
            return APIError(status: .gatewayTimeout, message: "The request did not finish in time: \(message)", type: "timeout_error", code: "timeout")
        case RejectCode.shuttingDown.rawValue, CompassFailure.unavailableCode, CompassFailure.noWorkersCode:
            return APIError(status: .serviceUnavailable, message: message, type: "service_unavailable", code: code,
                            retryAfterMilliseconds: failure.retryAfterMilliseconds ?? 1000)
        case FailureCode.cancelled.rawValue:
            return APIError(status: .init(code: 499, reasonPhrase: "Client Closed Request"), message: message, type: "cancelled", code: code)
        default:
            return APIError(status: .internalServerError, message: "The engine failed (\(code)): \(message)", type: "server_error", code: code)
        }
    }
}

/// `HTTPField.Name`, reached through the Hummingbird re-export of `HTTPFields`.
typealias FieldName = HTTPFields.Element.Name
