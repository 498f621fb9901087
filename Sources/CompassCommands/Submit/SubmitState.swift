import Foundation

/// What `compass submit --resume` needs to cut the same batches with the same ids: kept beside the
/// results file as `<results>.state.json`.
struct SubmitState: Codable, Equatable {
    var session: String
    var batchSize: Int
    var input: String
    var pool: String

    static func path(for output: String) -> String { output + ".state.json" }

    func save(for output: String) throws {
        let data = try JSONEncoder().encode(self)
        try data.write(to: URL(fileURLWithPath: SubmitState.path(for: output)), options: .atomic)
    }

    static func load(for output: String) throws -> SubmitState {
        let path = SubmitState.path(for: output)
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CommandFailure(message: "nothing to resume: \(path) is missing (it is written when a run starts)")
        }
        do {
            return try JSONDecoder().decode(SubmitState.self, from: data)
        } catch {
            throw CommandFailure(message: "\(path) is not a compass submit state file: \(error)")
        }
    }
}

/// The custom_ids already in a results file. A last line cut short by a crash is removed, so that
/// appending continues on a line boundary.
func completedIDs(inResults path: String) throws -> Set<String> {
    guard let data = FileManager.default.contents(atPath: path) else { return [] }
    var ids = Set<String>()
    var validEnd = 0
    var start = 0
    let bytes = [UInt8](data)
    while start < bytes.count {
        guard let nl = bytes[start...].firstIndex(of: 0x0a) else { break } // no newline: torn
        if let object = (try? JSONSerialization.jsonObject(with: Data(bytes[start..<nl]))) as? [String: Any],
           let id = object["custom_id"] as? String {
            ids.insert(id)
            validEnd = nl + 1
        } else {
            break
        }
        start = nl + 1
    }
    if validEnd < bytes.count {
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try handle.truncate(atOffset: UInt64(validEnd))
        try handle.close()
    }
    return ids
}
