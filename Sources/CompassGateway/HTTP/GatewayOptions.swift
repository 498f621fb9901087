import CompassClient

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
