import CompassClient
import CompassProtocol
import Foundation
import Hummingbird
import Logging
import Synchronization

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
}
