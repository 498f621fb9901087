import CompassProtocol
import CompassScheduler

/// The STATUS reply: the scheduler's snapshot plus what workers said about themselves.
public struct BrokerStatus: Codable, Sendable {
    public struct WorkerInfo: Codable, Sendable {
        public var id: String
        public var capabilities: WorkerCapabilities?
        /// GPU figures from the worker's latest HEARTBEAT.
        public var gpus: [GPUInfo]?
        /// Engine restarts the worker reported.
        public var engineRestarts: Int?

        enum CodingKeys: String, CodingKey { case id, capabilities, gpus, engineRestarts = "engine_restarts" }
    }

    public var brokerID: String
    public var version: String
    public var protocolVersion: Int
    public var uptimeSeconds: Double
    public var frontend: String
    public var backend: String
    public var accepting: Bool
    /// "curve" or "plaintext".
    public var security: String?
    public var curveRefusals: Int?
    public var scheduler: SchedulerSnapshot
    public var workers: [WorkerInfo]
    /// Requests completed per second over the last 10 seconds, per pool.
    public var requestsPerSecond: [String: Double]?

    enum CodingKeys: String, CodingKey {
        case brokerID = "broker_id", version, protocolVersion = "protocol_version", uptimeSeconds = "uptime_seconds", frontend, backend
        case accepting, security, curveRefusals = "curve_refusals", scheduler, workers, requestsPerSecond = "requests_per_second"
    }
}

