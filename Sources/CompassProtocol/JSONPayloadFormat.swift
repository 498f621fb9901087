import Foundation

/// The payload format of the protocol: a batch is a JSON array of requests, its results a JSON
/// array of results (one per request, by `custom_id`), its stats a JSON object of figures. The
/// broker gives it to its scheduler for poison isolation. Elements are cut and joined as raw bytes
/// at the JSON scanner's element boundaries, so requests and results pass through byte for byte.
public struct JSONPayloadFormat: PayloadFormat {
    public init() {}

    /// The first and second half of a request array, or nil when it holds fewer than 2 requests.
    public func halves(_ requests: [UInt8]) -> (first: [UInt8], second: [UInt8])? {
        guard let elements = JSONSyntax.arrayElements(requests), elements.count >= 2 else { return nil }
        let middle = elements.count / 2
        return (Self.array(requests, elements[..<middle]), Self.array(requests, elements[middle...]))
    }

    /// One JSON array holding the elements of `results`, in order (arrays that do not parse are skipped).
    public func concatenate(_ results: [[UInt8]]) -> [UInt8] {
        var out: [UInt8] = [UInt8(ascii: "[")]
        var first = true
        for payload in results {
            guard let elements = JSONSyntax.arrayElements(payload) else { continue }
            for range in elements {
                if !first { out.append(UInt8(ascii: ",")) }
                out += payload[range]
                first = false
            }
        }
        out.append(UInt8(ascii: "]"))
        return out
    }

    /// A result array that fails every request of `requests` with `code` and `message` (a request
    /// without a `custom_id` is named by its index, `#3`).
    public func failedResults(_ requests: [UInt8], code: AnyFailureCode, message: String) -> [UInt8] {
        let elements = JSONSyntax.arrayElements(requests) ?? []
        let results: [InferenceResult] = elements.enumerated().map { index, range in
            let object = (try? JSONSerialization.jsonObject(with: Data(requests[range]))) as? [String: Any]
            let id = object?["custom_id"] as? String ?? "#\(index)"
            return .failure(id, code: code.rawValue, message: message)
        }
        return (try? JSONEncoder().encode(results)).map { [UInt8]($0) } ?? Array("[]".utf8)
    }

    /// Sums the numeric fields of RESULT stats objects, and says in how many parts (`split_parts`).
    public func mergeStats(_ stats: [[UInt8]], parts: Int) -> [UInt8] {
        var total: [String: Double] = [:]
        for s in stats {
            guard let object = (try? JSONSerialization.jsonObject(with: Data(s))) as? [String: Any] else { continue }
            for (key, value) in object { if let n = value as? Double { total[key, default: 0] += n } }
        }
        var merged: [String: Any] = total.mapValues { $0.rounded() == $0 ? Int($0) as Any : $0 as Any }
        merged["split_parts"] = parts
        return (try? JSONSerialization.data(withJSONObject: merged, options: [.sortedKeys])).map { [UInt8]($0) } ?? Array("{}".utf8)
    }

    static func array(_ payload: [UInt8], _ ranges: ArraySlice<Range<Int>>) -> [UInt8] {
        var out: [UInt8] = [UInt8(ascii: "[")]
        for (k, range) in ranges.enumerated() {
            if k > 0 { out.append(UInt8(ascii: ",")) }
            out += payload[range]
        }
        out.append(UInt8(ascii: "]"))
        return out
    }
}
