import CompassProtocol
import Foundation

/// Decodes a batch payload into requests, keeping going past a bad request: a request that does
/// not decode becomes a per-request `bad_request` error and the rest of the batch still runs.
public enum RequestDecoding {
    public enum Item {
        case request(InferenceRequest)
        case invalid(customID: String, message: String)
    }

    /// The payload's items, or an error message when it is not a JSON array at all.
    public static func decode(_ payload: [UInt8]) -> Result<[Item], BatchDecodingError> {
        let data = Data(payload)
        let decoder = JSONDecoder()
        if let all = try? decoder.decode([InferenceRequest].self, from: data) {
            return .success(all.map { .request($0) })
        }
        guard let array = (try? JSONSerialization.jsonObject(with: data)) as? [Any] else {
            return .failure(BatchDecodingError(message: "the batch payload is not a JSON array of requests"))
        }
        return .success(array.enumerated().map { index, element in
            let customID = ((element as? [String: Any])?["custom_id"] as? String) ?? "#\(index)"
            guard JSONSerialization.isValidJSONObject(element),
                  let bytes = try? JSONSerialization.data(withJSONObject: element) else {
                return .invalid(customID: customID, message: "request \(index) is not a JSON object")
            }
            do {
                return .request(try decoder.decode(InferenceRequest.self, from: bytes))
            } catch {
                return .invalid(customID: customID, message: "request \(index) is invalid: \(describe(error))")
            }
        })
    }

    static func describe(_ error: any Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, _): "missing \"\(key.stringValue)\""
        case DecodingError.typeMismatch(_, let ctx), DecodingError.valueNotFound(_, let ctx), DecodingError.dataCorrupted(let ctx):
            ctx.codingPath.isEmpty ? ctx.debugDescription : "\"\(ctx.codingPath.map(\.stringValue).joined(separator: "."))\": \(ctx.debugDescription)"
        default: "\(error)"
        }
    }
}

public struct BatchDecodingError: Error, Sendable {
    public let message: String
}
