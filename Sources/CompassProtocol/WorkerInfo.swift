/// One GPU as a worker reports it (NVML when present; index only in CPU mode).
public struct GPUInfo: Codable, Sendable, Equatable {
    public var index: Int
    public var uuid: String?
    public var name: String?
    public var memoryUsedMiB: Int?
    public var memoryTotalMiB: Int?
    public var utilizationPercent: Int?

    public init(index: Int, uuid: String? = nil, name: String? = nil, memoryUsedMiB: Int? = nil, memoryTotalMiB: Int? = nil, utilizationPercent: Int? = nil) {
        self.index = index
        self.uuid = uuid
        self.name = name
        self.memoryUsedMiB = memoryUsedMiB
        self.memoryTotalMiB = memoryTotalMiB
        self.utilizationPercent = utilizationPercent
    }

    enum CodingKeys: String, CodingKey {
        case index, uuid, name, memoryUsedMiB = "memory_used_mib", memoryTotalMiB = "memory_total_mib"
        case utilizationPercent = "utilization_percent"
    }
}

/// How a worker's credit comes back to it (docs/protocol.md, Worker rules).
public enum CreditMode: String, Codable, Sendable, CaseIterable {
    /// Protocol 1 as first written: every RESULT or FAILED returns one credit; CREDIT(n) adds more.
    /// A worker's window can grow but never shrink. A READY without `credit_mode` means this.
    case implicit
    /// RESULT and FAILED return nothing: the worker grants every batch slot with CREDIT, so it can
    /// keep hundreds of one-request batches while they are small and few when they are large.
    case explicit
}

/// The READY frame: what a worker offers.
public struct WorkerCapabilities: Codable, Sendable, Equatable {
    public var pool: String
    public var tp: Int
    public var gpus: [GPUInfo]
    public var model: String
    public var engine: String
    public var maxBatch: Int
    /// The credit granted with READY: batches the broker may send before the next CREDIT.
    public var credit: Int
    public var pid: Int32
    public var host: String
    public var version: String
    /// `explicit` asks the broker not to return credit with RESULT and FAILED; the broker's WELCOME
    /// says whether it does. Absent: `implicit`.
    public var creditMode: CreditMode?
    /// Sequences the worker's engine runs at once, when the engine says (informational).
    public var capacity: Int?
    /// KV-cache tokens of the worker's engine, when the engine says (informational).
    public var capacityTokens: Int?

    public init(pool: String, tp: Int, gpus: [GPUInfo], model: String, engine: String, maxBatch: Int, credit: Int, pid: Int32, host: String,
                version: String, creditMode: CreditMode? = nil, capacity: Int? = nil, capacityTokens: Int? = nil) {
        self.pool = pool
        self.tp = tp
        self.gpus = gpus
        self.model = model
        self.engine = engine
        self.maxBatch = maxBatch
        self.credit = credit
        self.pid = pid
        self.host = host
        self.version = version
        self.creditMode = creditMode
        self.capacity = capacity
        self.capacityTokens = capacityTokens
    }

    enum CodingKeys: String, CodingKey {
        case pool, tp, gpus, model, engine, maxBatch = "max_batch", credit, pid, host, version
        case creditMode = "credit_mode", capacity, capacityTokens = "capacity_tokens"
    }

    /// `pool` and `credit` are required (`WorkerCapabilities.requiredFields`); every other field
    /// may be absent or null (it is informational, shown by STATUS): `tp` 1, `gpus` none, `max_batch`
    /// 0, `pid` 0, text fields empty. A worker without `host` and `pid` is not known beyond its
    /// connection: answers it sends after reconnecting under another routing id return no credit.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        pool = try c.decode(String.self, forKey: .pool)
        credit = try c.decode(Int.self, forKey: .credit)
        tp = try c.decodeIfPresent(Int.self, forKey: .tp) ?? 1
        gpus = try c.decodeIfPresent([GPUInfo].self, forKey: .gpus) ?? []
        model = try c.decodeIfPresent(String.self, forKey: .model) ?? ""
        engine = try c.decodeIfPresent(String.self, forKey: .engine) ?? ""
        maxBatch = try c.decodeIfPresent(Int.self, forKey: .maxBatch) ?? 0
        pid = try c.decodeIfPresent(Int32.self, forKey: .pid) ?? 0
        host = try c.decodeIfPresent(String.self, forKey: .host) ?? ""
        version = try c.decodeIfPresent(String.self, forKey: .version) ?? ""
        creditMode = try c.decodeIfPresent(CreditMode.self, forKey: .creditMode)
        capacity = try c.decodeIfPresent(Int.self, forKey: .capacity)
        capacityTokens = try c.decodeIfPresent(Int.self, forKey: .capacityTokens)
    }

    /// The READY fields a worker must send (docs/protocol.md, READY capabilities).
    public static let requiredFields = ["pool", "credit"]
}

/// The WELCOME frame to a worker: the broker's settings it must follow.
public struct WorkerWelcome: Codable, Sendable, Equatable {
    public var workerID: String
    public var heartbeatMilliseconds: UInt32
    public var liveness: UInt32
    /// The credit mode the broker applies to this worker: `explicit` only when the READY asked for
    /// it and the broker honours it. Absent (a broker that predates it): `implicit`.
    public var creditMode: CreditMode?

    public init(workerID: String, heartbeatMilliseconds: UInt32, liveness: UInt32, creditMode: CreditMode? = nil) {
        self.workerID = workerID
        self.heartbeatMilliseconds = heartbeatMilliseconds
        self.liveness = liveness
        self.creditMode = creditMode
    }

    enum CodingKeys: String, CodingKey {
        case workerID = "worker_id", heartbeatMilliseconds = "heartbeat_ms", liveness, creditMode = "credit_mode"
    }
}

/// The WELCOME frame to a producer (answer to HELLO).
public struct ProducerWelcome: Codable, Sendable, Equatable {
    /// Random per broker process (also in HEARTBEAT replies): a change means the broker restarted.
    public var brokerID: String
    public var brokerVersion: String
    public var heartbeatMilliseconds: UInt32
    public var liveness: UInt32
    /// Results held for this session that are re-sent right after this message.
    public var pendingResults: Int
    /// The largest payload the broker accepts; a larger one would get the connection dropped.
    public var maxPayloadBytes: Int?

    public init(brokerID: String, brokerVersion: String, heartbeatMilliseconds: UInt32, liveness: UInt32, pendingResults: Int,
                maxPayloadBytes: Int? = nil) {
        self.maxPayloadBytes = maxPayloadBytes
        self.brokerID = brokerID
        self.brokerVersion = brokerVersion
        self.heartbeatMilliseconds = heartbeatMilliseconds
        self.liveness = liveness
        self.pendingResults = pendingResults
    }

    enum CodingKeys: String, CodingKey {
        case brokerID = "broker_id", brokerVersion = "broker_version", heartbeatMilliseconds = "heartbeat_ms", liveness, pendingResults = "pending_results"
        case maxPayloadBytes = "max_payload_bytes"
    }
}

/// What a worker's HEARTBEAT frame may carry.
public struct WorkerHeartbeatStats: Codable, Sendable {
    public var gpus: [GPUInfo]?
    public var engineRestarts: Int?

    public init(gpus: [GPUInfo]?, engineRestarts: Int?) {
        self.gpus = gpus
        self.engineRestarts = engineRestarts
    }

    enum CodingKeys: String, CodingKey { case gpus, engineRestarts = "engine_restarts" }
}

/// The compass release these binaries belong to.
public let compassVersion = "0.1.0"
