import CompassProtocol

/// A batch's input file, checked whole before anything of it runs.
extension BatchJobs {
    /// Checks every line: JSON object, unique custom_id, method POST, url = the batch's endpoint,
    /// a body with a model naming a pool the broker has.
    func validate(inputPath: String, endpoint: Endpoint) async throws -> (total: Int, errors: [BatchRecord.LineError]) {
        var source = try LineSource(path: inputPath)
        defer { source.close() }
        var total = 0
        var errors: [BatchRecord.LineError] = []
        var seen = Set<String>()
        var firstLineOfModel: [String: Int] = [:]
        func problem(_ code: String, _ message: String, _ line: Int, _ param: String? = nil) {
            if errors.count < 100 { errors.append(.init(code: code, message: message, line: line, param: param)) }
        }
        while let line = try source.next() {
            guard line.contains(where: { $0 != 0x20 && $0 != 0x09 }) else { continue }
            total += 1
            let n = source.lineNumber
            guard let object = try? JSON.parse(line), object.isObject else {
                problem("invalid_json_line", "line \(n) is not a JSON object", n)
                continue
            }
            guard let customID = object["custom_id"]?.string, !customID.isEmpty else {
                problem("missing_required_parameter", "line \(n) has no custom_id (a non-empty string)", n, "custom_id")
                continue
            }
            if !seen.insert(customID).inserted {
                problem("duplicate_custom_id", "custom_id '\(customID)' appears more than once (line \(n))", n, "custom_id")
            }
            if let method = object["method"], method.string != "POST" {
                problem("invalid_method", "line \(n): method must be POST", n, "method")
            }
            if let url = object["url"]?.string, url != endpoint.rawValue {
                problem("mismatched_url", "line \(n): url \(url) is not the batch's endpoint \(endpoint.rawValue)", n, "url")
            }
            guard let body = object["body"], body.isObject else {
                problem("missing_required_parameter", "line \(n) has no body object", n, "body")
                continue
            }
            guard let model = body["model"]?.string, !model.isEmpty else {
                problem("missing_required_parameter", "line \(n): body.model is missing", n, "body.model")
                continue
            }
            if firstLineOfModel[model] == nil { firstLineOfModel[model] = n }
        }
        for (model, line) in firstLineOfModel.sorted(by: { $0.value < $1.value }) {
            if await directoryOfPools.availability(of: model) == .unknownPool {
                problem("model_not_found", "The model '\(model)' does not exist: the broker has no pool of that name", line, "body.model")
            }
        }
        return (total, errors)
    }
}
