import CompassProtocol
import Hummingbird

/// The Batch API's listing (the batches themselves: `BatchJobs`).
extension Gateway {
    /// GET /v1/batches?limit=&after=
    func listBatches(_ request: Request) -> Response {
        let query = request.uri.queryParameters
        let limit = max(1, min(100, query.get("limit").flatMap { Int($0) } ?? 20))
        var all = jobs.list()
        if let after = query.get("after").map({ String($0) }), let index = all.firstIndex(where: { $0.id == after }) {
            all = Array(all[(index + 1)...])
        }
        let page = Array(all.prefix(limit))
        return Gateway.json(.object([
            ("object", "list"), ("data", .array(page.map(\.json))), ("first_id", .optional(page.first?.id)),
            ("last_id", .optional(page.last?.id)), ("has_more", .bool(all.count > page.count)),
        ]))
    }
}
