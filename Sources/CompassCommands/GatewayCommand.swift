import ArgumentParser
import CompassGateway
import Foundation

struct GatewayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway",
        abstract: "Serve an OpenAI-compatible HTTP API in front of the broker.",
        discussion: """
        POST /v1/completions and /v1/chat/completions (with stream: true too), GET /v1/models (one \
        model per pool: 'model' names the pool), the Files and Batch APIs (/v1/files, /v1/batches) and \
        GET /health. A request for a pool with room goes to the broker at once; while the pool is \
        busy (this gateway's requests in flight reach its workers' summed capacity, or, for workers \
        that report none, --eager-batches batches per worker), requests are gathered into one compass \
        batch that goes out at --max-batch requests, --max-wait-ms after the first of them, or as soon \
        as a batch comes back, whichever comes first. A connection is closed after --idle-timeout-ms \
        with no request in progress (a request's head must arrive whole within it), and when a \
        request's body falls behind --body-timeout-ms plus one second per --min-body-rate bytes. \
        Bodies past --max-body-bytes (JSON) or --max-upload-bytes (files, written to disk as they \
        arrive) get 413 and the connection closes. Errors use OpenAI's shape and codes: 400 bad \
        request, 401 bad key, 404 unknown model, 413 too large, 429 pool full (busy), 503 no worker \
        serves the pool, 504 past --deadline-ms.
        """)

    @Option(help: "The broker's frontend endpoint.") var broker = "tcp://127.0.0.1:5555"
    @Option(help: "HOST:PORT to listen on (port 0: any free port; the chosen one is printed).") var listen = "127.0.0.1:8000"
    @Option(help: "Most requests gathered into one compass batch.") var maxBatch = 32
    @Option(help: "Milliseconds a request may wait for others to join its batch.") var maxWaitMs: Double = 5
    @Option(help: "Most payload bytes in one gathered batch.") var maxBatchBytes = 8 << 20
    @Option(help: "Batches in flight per worker below which a request goes out at once, for pools whose workers report no capacity (0: always wait --max-wait-ms for others).") var eagerBatches = 2
    @Option(help: "Milliseconds a connection may stay open with no request in progress.") var idleTimeoutMs: Int64 = 30_000
    @Option(help: "Milliseconds a request body may take to arrive, plus one second per --min-body-rate bytes that did.") var bodyTimeoutMs: Int64 = 30_000
    @Option(help: "Bytes per second a request body must keep up after --body-timeout-ms.") var minBodyRate = 64 << 10
    @Option(help: "Largest JSON request body in bytes.") var maxBodyBytes = 32 << 20
    @Option(help: "Require 'Authorization: Bearer KEY' on /v1 (default: $COMPASS_GATEWAY_API_KEY, or none).") var apiKey: String?
    @Option(help: "Milliseconds after which a request is answered 504 (0: no deadline).") var deadlineMs: UInt32 = 0
    @Option(help: "Directory for the Files and Batch APIs (default: a new temporary directory, removed on exit).") var dataDir: String?
    @Option(help: "Batch API: requests per compass batch.") var jobBatchSize = 64
    @Option(help: "Batch API: compass batches in flight per batch job.") var jobWindow = 8
    @Option(help: "Largest file upload in bytes.") var maxUploadBytes = 512 << 20
    @OptionGroup var curve: CurveClientOptions
    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        guard maxBatch >= 1 else { throw ValidationError("--max-batch must be at least 1") }
        guard maxWaitMs >= 0 else { throw ValidationError("--max-wait-ms must not be negative") }
        guard maxBatchBytes >= 1024 else { throw ValidationError("--max-batch-bytes must be at least 1024") }
        guard eagerBatches >= 0 else { throw ValidationError("--eager-batches must not be negative") }
        guard idleTimeoutMs >= 1, bodyTimeoutMs >= 1, minBodyRate >= 1 else {
            throw ValidationError("--idle-timeout-ms, --body-timeout-ms and --min-body-rate must be at least 1")
        }
        guard maxBodyBytes >= 1024, maxUploadBytes >= 1024 else { throw ValidationError("--max-body-bytes and --max-upload-bytes must be at least 1024") }
        guard jobBatchSize >= 1, jobWindow >= 1 else { throw ValidationError("--job-batch-size and --job-window must be at least 1") }
        guard parseListen() != nil else { throw ValidationError("--listen must be HOST:PORT, e.g. 127.0.0.1:8000") }
    }

    func parseListen() -> (String, Int)? {
        guard let colon = listen.lastIndex(of: ":") else { return nil }
        var host = String(listen[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty, let port = Int(listen[listen.index(after: colon)...]), (0...65535).contains(port) else { return nil }
        return (host, port)
    }

    func run() async throws {
        let logger = logging.bootstrap("compass.gateway")
        let (host, port) = parseListen()!
        let directory: String
        if let dataDir {
            directory = dataDir
        } else {
            directory = NSTemporaryDirectory() + "compass-gateway-" + UUID().uuidString.lowercased().prefix(8)
        }
        var options = GatewayOptions(broker: broker, dataDirectory: directory)
        options.host = host
        options.port = port
        options.maxBatch = maxBatch
        options.maxWaitMilliseconds = maxWaitMs
        options.maxBatchBytes = maxBatchBytes
        options.apiKey = apiKey ?? ProcessInfo.processInfo.environment["COMPASS_GATEWAY_API_KEY"].flatMap { $0.isEmpty ? nil : $0 }
        options.deadlineMilliseconds = deadlineMs
        options.jobBatchSize = jobBatchSize
        options.jobWindow = jobWindow
        options.maxUploadBytes = maxUploadBytes
        options.maxBodyBytes = maxBodyBytes
        options.eagerBatches = eagerBatches
        options.connections.idleMilliseconds = idleTimeoutMs
        options.connections.bodyGraceMilliseconds = bodyTimeoutMs
        options.connections.minBodyBytesPerSecond = minBodyRate
        if let keys = try curve.load("compass gateway") {
            options.configureClient = { $0.curve = keys }
        }
        let gateway: Gateway
        do {
            gateway = try Gateway(options: options, logger: logger)
        } catch {
            throw fail("compass gateway", "cannot start: \(error)")
        }
        let note = "broker \(broker), \(options.apiKey == nil ? "no API key" : "API key required"), data \(directory)"
        // A temporary data directory dies with the gateway (a later one could not find it anyway).
        defer { if dataDir == nil { try? FileManager.default.removeItem(atPath: directory) } }
        try await gateway.run { host, port in
            let shown = host.contains(":") ? "[\(host)]" : host
            // One line on stdout once the socket is bound (scripts and tests wait for it).
            FileHandle.standardOutput.write(Data("compass gateway listening on http://\(shown):\(port) (\(note))\n".utf8))
        }
    }
}
