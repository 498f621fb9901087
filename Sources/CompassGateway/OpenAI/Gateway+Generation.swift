import CompassProtocol
import Hummingbird

/// The generation endpoints: a call's requests through the batcher.
extension Gateway {
    /// POST /v1/completions and /v1/chat/completions.
    func serve(_ request: Request, _ endpoint: Endpoint) async -> Response {
        await answer {
            let body = try await readJSON(request)
            let call = try Call.parse(body, endpoint: endpoint)
            try await checkPool(call.model)
            let results = try await run(call)
            let created = now()
            let id = Render.newID(endpoint == .chat ? "chatcmpl-" : "cmpl-")
            if call.stream {
                let bytes = Render.eventStream(Render.chunks(call, results, id: id, created: created))
                return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"],
                                body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes)))
            }
            return Gateway.json(Render.body(call, results, id: id, created: created))
        }
    }

    func checkPool(_ pool: String) async throws {
        switch await pools.availability(of: pool) {
        case .ready: return
        case .unknownPool: throw APIError.modelNotFound(pool)
        case .noWorkers:
            throw APIError.from(CompassFailure(code: CompassFailure.noWorkersCode,
                                               message: "No worker serves the pool '\(pool)' at the moment: start a worker for it, or retry later"))
        case .brokerUnreachable:
            throw APIError.from(CompassFailure(code: CompassFailure.unavailableCode,
                                               message: "The compass broker at \(options.broker) does not answer"))
        }
    }

    /// Each request of the call through the batcher, concurrently; the first failure fails the call.
    func run(_ call: Call) async throws -> [InferenceResult] {
        let batcher = batcher
        let deadline = options.deadlineMilliseconds
        do {
            let results: [InferenceResult]
            if call.requests.count == 1 {
                results = [try await batcher.submit(call.requests[0], pool: call.model, deadlineMilliseconds: deadline)]
            } else {
                results = try await withThrowingTaskGroup(of: (Int, InferenceResult).self) { group in
                    for (i, request) in call.requests.enumerated() {
                        group.addTask { (i, try await batcher.submit(request, pool: call.model, deadlineMilliseconds: deadline)) }
                    }
                    var results = [InferenceResult?](repeating: nil, count: call.requests.count)
                    for try await (i, result) in group { results[i] = result }
                    return results.map { $0! }
                }
            }
            return try results.enumerated().map { i, result in try call.check(result, i).get() }
        } catch let failure as CompassFailure {
            throw APIError.from(failure)
        }
    }
}
