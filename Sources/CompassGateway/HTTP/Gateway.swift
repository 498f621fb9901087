import CompassClient
import CompassProtocol
import Foundation
import Hummingbird
import Logging
import Synchronization

/// Settings of `compass gateway`.
public struct GatewayOptions: Sendable {
    /// The broker's frontend endpoint.
    public var broker: String
    public var host = "127.0.0.1"
    /// 0: any free port (the chosen one is printed).
    public var port = 8000
    /// Dynamic batching: a pool's pending requests go out at this many...
    public var maxBatch = 32
    /// ...or this long after the first of them arrived.
    public var maxWaitMilliseconds: Double = 5
    /// ...or when their payload would pass this many bytes. A request for a pool with room goes at
    /// once: while this gateway's requests in flight to the pool are fewer than its workers'
    /// summed capacity (STATUS), or, where a worker reports none, while fewer than this many
    /// batches per worker are in flight (0: always wait for the window).
    public var maxBatchBytes = 8 << 20
    public var eagerBatches = 2
    /// When set, /v1 requires `Authorization: Bearer <key>`.
    public var apiKey: String?
    /// Milliseconds a request may take before it is answered 504 (0: no deadline).
    public var deadlineMilliseconds: UInt32 = 0
    /// Where the Files and Batch APIs keep their files.
    public var dataDirectory: String
    /// Batch API: requests per compass batch, and compass batches in flight per batch.
    public var jobBatchSize = 64
    public var jobWindow = 8
    /// Largest JSON body, and largest file upload, in bytes (413 past them, and the connection
    /// closes). An upload is written to disk as it arrives: it holds a chunk in memory, not the file.
    public var maxBodyBytes = 32 << 20
    public var maxUploadBytes = 512 << 20
    /// Idle limit and body deadline of each HTTP connection.
    public var connections = ConnectionLimits()
    public var statusRefreshMilliseconds: UInt64 = 1000
    /// Applied to the options of the gateway's broker clients (CURVE keys, say).
    public var configureClient: @Sendable (inout ClientOptions) -> Void = { _ in }

    public init(broker: String, dataDirectory: String) {
        self.broker = broker
        self.dataDirectory = dataDirectory
    }
}

/// The OpenAI-compatible HTTP gateway in front of a compass broker (issue #9).
///
/// `/v1/completions` and `/v1/chat/completions` requests go through a `Batcher`, which gathers
/// concurrent requests for the same pool into one compass batch. `/v1/models` lists the broker's
/// pools. The Files and Batch APIs run JSONL files through the broker (`BatchJobs`).
public final class Gateway: Sendable {
    public let options: GatewayOptions
    let logger: Logger
    let session: String
    let online: CompassClient
    let jobsClient: CompassClient
    public let batcher: Batcher
    public let pools: PoolDirectory
    let files: FileStore
    let jobs: BatchJobs
    let startedAt = now()

    public init(options: GatewayOptions, logger: Logger) throws {
        self.options = options
        self.logger = logger
        let session = "gw-" + UUID().uuidString.lowercased().prefix(8)
        self.session = session

        // Online requests: when the broker answers `busy` the callers get 429 at once (OpenAI
        // clients retry those themselves, honouring retry-after-ms), nothing is queued behind them.
        var onlineOptions = ClientOptions(broker: options.broker, session: session)
        options.configureClient(&onlineOptions)
        onlineOptions.retryBusy = false
        let online = try CompassClient(options: onlineOptions)
        self.online = online
        // Batch API jobs: the client's own back-off on `busy` is what a 24-hour job wants.
        var jobsOptions = ClientOptions(broker: options.broker, session: session + "-jobs")
        options.configureClient(&jobsOptions)
        let jobsClient = try CompassClient(options: jobsOptions)
        self.jobsClient = jobsClient

        let pools = PoolDirectory(refreshMilliseconds: options.statusRefreshMilliseconds) { try await online.status() }
        self.pools = pools
        let onlineCounter = Atomic<UInt64>(0)
        batcher = Batcher(configuration: .init(maxBatch: options.maxBatch, maxWaitMilliseconds: options.maxWaitMilliseconds,
                                               maxBatchBytes: options.maxBatchBytes, eagerBatches: options.eagerBatches),
                          room: { pools.room(of: $0) }) { pool, requests, deadline in
            let id = "\(session)-o\(onlineCounter.add(1, ordering: .relaxed).newValue)"
            return await Gateway.submit(online, id: id, pool: pool, requests: requests, deadline: deadline)
        }
        files = try FileStore(directory: options.dataDirectory + "/files")
        let jobCounter = Atomic<UInt64>(0)
        var settings = BatchJobs.Settings()
        settings.batchSize = options.jobBatchSize
        settings.window = options.jobWindow
        settings.maxBatchBytes = options.maxBatchBytes
        jobs = try BatchJobs(directory: options.dataDirectory + "/batches", files: files, pools: pools, settings: settings) { pool, requests, deadline in
            let id = "\(session)-j\(jobCounter.add(1, ordering: .relaxed).newValue)"
            return await Gateway.submit(jobsClient, id: id, pool: pool, requests: requests, deadline: deadline)
        }
    }

    /// One compass batch through `client`, its outcome as a `BatchAnswer`.
    static func submit(_ client: CompassClient, id: String, pool: String, requests: [InferenceRequest], deadline: UInt32) async -> BatchAnswer {
        do {
            // Batches that start alike (a few-shot preamble, one scoring context) go to one worker,
            // whose engine then computes the shared prefix once.
            let outcome = try await client.submit(requests, pool: pool, batchID: id, deadlineMilliseconds: deadline,
                                                  affinity: AffinityKey.of(requests))
            switch outcome.status {
            case .completed(let payload, _):
                guard let results = try? JSONDecoder().decode([InferenceResult].self, from: Data(payload)) else {
                    return BatchAnswer(failure: CompassFailure(code: FailureCode.engineError.rawValue, message: "the worker's result payload does not decode"))
                }
                return BatchAnswer(results: Dictionary(results.map { ($0.customID, $0) }, uniquingKeysWith: { a, _ in a }))
            case .failed(let code, let message, let partial):
                let results = (try? JSONDecoder().decode([InferenceResult].self, from: Data(partial))) ?? []
                return BatchAnswer(results: Dictionary(results.map { ($0.customID, $0) }, uniquingKeysWith: { a, _ in a }),
                                   failure: CompassFailure(code: code, message: message))
            }
        } catch let ClientError.busy(_, wait) {
            return BatchAnswer(failure: busyFailure(pool, wait))
        } catch let ClientError.rejected(code, message) {
            return BatchAnswer(failure: CompassFailure(code: code, message: message))
        } catch {
            return BatchAnswer(failure: CompassFailure(code: "client_error", message: "\(error)"))
        }
    }

    static func busyFailure(_ pool: String, _ wait: UInt32) -> CompassFailure {
        CompassFailure(code: RejectCode.busy.rawValue, message: "pool '\(pool)' holds as much as the broker allows; retry later",
                       retryAfterMilliseconds: wait)
    }

    /// Serves until SIGINT or SIGTERM. `onListening` gets the bound host and port.
    public func run(onListening: @escaping @Sendable (String, Int) -> Void) async throws {
        let refresher = Task { await pools.run() }
        defer {
            refresher.cancel()
            online.close()
            jobsClient.close()
        }
        let host = options.host
        let limits = options.connections
        let logger = logger
        let app = Application(
            router: makeRouter(),
            server: .http1(configuration: .init(additionalChannelHandlers: [ConnectionGuard(limits: limits, logger: logger)],
                                                idleTimeout: .milliseconds(limits.idleMilliseconds))),
            configuration: .init(address: .hostname(host, port: options.port), serverName: "compass-gateway", backlog: 1024),
            onServerRunning: { channel in onListening(host, channel.localAddress?.port ?? 0) },
            logger: logger)
        try await app.runService()
        logger.info("gateway stopped")
    }

    func makeRouter() -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        router.add(middleware: ErrorShapeMiddleware())
        router.get("/health") { _, _ in self.health() }
        let v1 = router.group("v1")
        if let key = options.apiKey { v1.add(middleware: APIKeyMiddleware(key: key)) }
        v1.get("models") { _, _ in await self.models() }
        v1.get("models/:model") { _, context in await self.model(context.parameters.get("model") ?? "") }
        v1.post("completions") { request, _ in await self.serve(request, .completions) }
        v1.post("chat/completions") { request, _ in await self.serve(request, .chat) }
        v1.post("files") { request, _ in await self.answer { try await self.upload(request) } }
        v1.get("files") { request, _ in
            let purpose = request.uri.queryParameters.get("purpose")
            return Gateway.json(.object([("object", "list"), ("data", .array(self.files.list(purpose: purpose).map(\.json))),
                                         ("has_more", false)]))
        }
        v1.get("files/:id") { _, context in
            await self.answer { Gateway.json(try self.file(context.parameters.get("id")).json) }
        }
        v1.delete("files/:id") { _, context in
            await self.answer {
                let file = try self.file(context.parameters.get("id"))
                _ = self.files.delete(file.id)
                return Gateway.json(.object([("id", .string(file.id)), ("object", "file"), ("deleted", true)]))
            }
        }
        v1.get("files/:id/content") { _, context in
            await self.answer {
                let file = try self.file(context.parameters.get("id"))
                let body = try await FileIO().loadFile(path: self.files.contentPath(file.id), context: context)
                return Response(status: .ok, headers: [.contentType: "application/octet-stream"], body: body)
            }
        }
        v1.post("batches") { request, _ in
            await self.answer { Gateway.json(try self.jobs.create(try await self.readJSON(request)).json) }
        }
        v1.get("batches") { request, _ in self.listBatches(request) }
        v1.get("batches/:id") { _, context in
            await self.answer {
                let id = context.parameters.get("id") ?? ""
                guard let record = self.jobs.get(id) else { throw APIError.notFound("No batch with id '\(id)'", code: "batch_not_found") }
                return Gateway.json(record.json)
            }
        }
        v1.post("batches/:id/cancel") { _, context in
            await self.answer { Gateway.json(try self.jobs.cancel(context.parameters.get("id") ?? "").json) }
        }
        return router
    }

    // MARK: - Helpers

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

    // MARK: - Generation

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

    // MARK: - Models, health

    func modelJSON(_ pool: PoolInfo) -> JSON {
        .object([("id", .string(pool.name)), ("object", "model"), ("created", .int(startedAt)), ("owned_by", "compass"),
                 ("workers", .int(pool.workers)), ("queued_batches", .int(pool.queuedBatches)), ("running_batches", .int(pool.runningBatches))])
    }

    func models() async -> Response {
        guard let list = await pools.pools() else {
            return APIError.from(CompassFailure(code: CompassFailure.unavailableCode, message: "The compass broker at \(options.broker) does not answer")).response
        }
        return Gateway.json(.object([("object", "list"), ("data", .array(list.map(modelJSON)))]))
    }

    func model(_ name: String) async -> Response {
        guard let list = await pools.pools() else {
            return APIError.from(CompassFailure(code: CompassFailure.unavailableCode, message: "The compass broker at \(options.broker) does not answer")).response
        }
        guard let pool = list.first(where: { $0.name == name }) else { return APIError.modelNotFound(name).response }
        return Gateway.json(modelJSON(pool))
    }

    func health() -> Response {
        let broker = pools.broker
        let s = batcher.stats
        let body: JSON = .object([
            ("status", .string(broker.reachable ? "ok" : "broker_unreachable")),
            ("broker", .object([("endpoint", .string(options.broker)), ("reachable", .bool(broker.reachable)), ("broker_id", .optional(broker.id)),
                                ("status_age_ms", broker.ageMilliseconds.map { .int(Int($0)) } ?? .null)])),
            ("batcher", .object([
                ("max_batch", .int(options.maxBatch)), ("max_wait_ms", .double(options.maxWaitMilliseconds)),
                ("eager_batches", .int(options.eagerBatches)),
                ("requests", .int(s.requests)), ("batches", .int(s.batches)), ("largest_batch", .int(s.largestBatch)),
                // Batches by why they went: spare (the pool had room: at once), full, window, freed.
                ("flushes", .object(BatchWindow.Reason.allCases.map { ($0.rawValue, .int(s.flushes[$0] ?? 0)) })),
                ("mean_batch_size", .double((s.meanBatchSize * 100).rounded() / 100)),
                // How long requests waited to be flushed: the latency that batching added.
                ("wait_ms_mean", .double((s.meanWaitMilliseconds * 1000).rounded() / 1000)),
                ("wait_ms_max", .double((s.maxWaitMilliseconds * 1000).rounded() / 1000)),
                ("wait_ms_total", .double((Double(s.totalWaitNanoseconds) / 1000).rounded() / 1000)),
            ])),
        ])
        return Gateway.json(body, status: broker.reachable ? .ok : .serviceUnavailable)
    }

    // MARK: - Files, batches

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

/// Requires `Authorization: Bearer <key>` (compared in constant time).
struct APIKeyMiddleware<Context: RequestContext>: RouterMiddleware {
    let key: [UInt8]

    init(key: String) { self.key = Array(key.utf8) }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let header = request.headers[.authorization], header.hasPrefix("Bearer ") else { return APIError.unauthorized.response }
        let token = String(header.dropFirst("Bearer ".count)).trimmingCharacters(in: .whitespaces)
        let given = [UInt8](token.utf8)
        var difference = given.count == key.count ? 0 : 1
        for i in 0..<min(given.count, key.count) { difference |= Int(given[i] ^ key[i]) }
        guard difference == 0 else { return APIError.unauthorized.response }
        return try await next(request, context)
    }
}

/// Hummingbird's own errors (no such route, body too large...) in OpenAI's error shape.
struct ErrorShapeMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as any HTTPResponseError {
            let message = error.status == .notFound ? "No route \(request.method) \(request.uri.path)" : "\(error)"
            return APIError(status: error.status, message: message, type: "invalid_request_error",
                            code: error.status == .notFound ? "unknown_url" : nil).response
        }
    }
}
