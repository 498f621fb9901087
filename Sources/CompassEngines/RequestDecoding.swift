import CompassProtocol

/// Decodes a batch payload into requests, keeping going past a bad request: a request that breaks
/// a rule (`RequestRules`) becomes a per-request `bad_request` error and the rest of the batch runs.
public enum RequestDecoding {
    public enum Item {
        case request(InferenceRequest)
        case invalid(customID: String, message: String)
    }

    /// The payload's items, or an error message when it is not a JSON array at all.
    public static func decode(_ payload: [UInt8]) -> Result<[Item], BatchDecodingError> {
        guard let array = (try? JSON.parse(payload))?.array else {
            return .failure(BatchDecodingError(message: "the batch payload is not a JSON array of requests"))
        }
        return .success(array.enumerated().map { index, element in
            switch RequestRules.validate(element) {
            case .success(let request): return .request(request)
            case .failure(let problem):
                let id = problem.customID ?? "#\(index)"
                return .invalid(customID: id, message: "request \(id): \(problem.message)")
            }
        })
    }
}

public struct BatchDecodingError: Error, Sendable {
    public let message: String
}
