import CompassProtocol
import CompassScheduler

/// The STATUS reply: the scheduler's snapshot plus what workers said about themselves.
public struct BrokerStatus: Codable, Sendable {
    public struct WorkerInfo: Codable, Sendable {
        public var id: String
        public var capabilities: WorkerCapabilities?
        /// GPU figures from the worker's latest HEARTBEAT.
        public var gpus: [GPUInfo]?
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

    enum CodingKeys: String, CodingKey {
        case brokerID = "broker_id", version, protocolVersion = "protocol_version", uptimeSeconds = "uptime_seconds", frontend, backend
        case accepting, security, curveRefusals = "curve_refusals", scheduler, workers
    }
}

