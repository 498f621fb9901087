import CompassProtocol
import Foundation

/// A compass deployment: one broker and the pools of workers behind it (`topology.yaml`).
public struct Topology: Sendable, Equatable {
    public struct Broker: Sendable, Equatable {
        public var frontend = "tcp://127.0.0.1:5555"
        public var backend = "tcp://127.0.0.1:5556"
        public var heartbeatMilliseconds: UInt64 = 1000
        public var liveness: UInt64 = 3
        public var maxPoolBytes: Int?
        public var maxPayloadBytes: Int?
        public var leaseMilliseconds: UInt64?
        public var maxAttempts: Int?
        /// The broker's journal file (nil: memory only).
        public var journal: String?

        public init() {}
    }

    public struct Pool: Sendable, Equatable {
        public var name: String
        public var engine = "synthetic"
        public var model = ""
        public var tp = 1
        /// Worker processes to start. With `gpus`, one per disjoint group of `tp` GPUs.
        public var workers = 1
        /// GPU indices given to this pool; empty for CPU engines.
        public var gpus: [Int] = []
        public var credit = 2
        public var engineArguments: [String: String] = [:]
        /// Extra environment for this pool's workers and engines (e.g. NCCL settings).
        public var environment: [String: String] = [:]
        public var startupTimeoutMilliseconds: UInt64?
        public var progressTimeoutMilliseconds: UInt64?
        /// Attempts per batch in this pool (the broker's default otherwise).
        public var maxAttempts: Int?

        public init(name: String) { self.name = name }

        /// The GPU groups, one per worker: `gpus` cut into consecutive groups of `tp`.
        /// Without GPUs, `workers` empty groups (CPU workers).
        public var groups: [[Int]] {
            if gpus.isEmpty { return Array(repeating: [], count: workers) }
            return stride(from: 0, to: gpus.count - gpus.count % tp, by: tp).map { Array(gpus[$0..<$0 + tp]) }
        }
    }

    /// `gateway:` — the OpenAI-compatible HTTP gateway `compass up` runs too (nil: none). Its API
    /// key is not kept here: the gateway reads COMPASS_GATEWAY_API_KEY from the environment.
    public struct Gateway: Sendable, Equatable {
        public var listen = "127.0.0.1:8000"
        public var maxBatch: Int?
        public var maxWaitMilliseconds: Int?
        public var deadlineMilliseconds: Int?
        public var dataDirectory: String?
        /// With `security:`, the gateway's secret CURVE key file (its public key in allow_producers).
        public var curveKey: String?
        public init() {}
    }

    public var broker = Broker()
    public var pools: [Pool] = []
    public var gateway: Gateway?
    public var security: Security?

    /// CURVE for everything `compass up` starts (paths resolved against the topology file's folder).
    public struct Security: Sendable, Equatable {
        /// The broker's secret key file.
        public var brokerKey: String
        public var allowProducers: String?
        public var allowWorkers: String?
        /// The secret key file `compass up` gives its workers (its public key in `allowWorkers`).
        public var workerKey: String?

        /// The broker's public key file for clients: NAME.pub next to NAME.key when it exists.
        public var brokerPublicKey: String {
            let pub = brokerKey.hasSuffix(".key") ? String(brokerKey.dropLast(4)) + ".pub" : brokerKey
            return FileManager.default.fileExists(atPath: pub) ? pub : brokerKey
        }
    }

    public init() {}
}

/// One thing wrong in a topology file, with where it is.
public struct TopologyProblem: Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var line: Int?
    public var column: Int?
    public var message: String

    public init(file: String, line: Int? = nil, column: Int? = nil, message: String) {
        self.file = file
        self.line = line
        self.column = column
        self.message = message
    }

    public var description: String {
        if let line, let column { return "\(file):\(line):\(column): \(message)" }
        return "\(file): \(message)"
    }
}

/// Every problem found in a topology file (it is reported whole, not one at a time).
public struct TopologyError: Error, Sendable, CustomStringConvertible {
    public var problems: [TopologyProblem]

    public var description: String { problems.map(\.description).joined(separator: "\n") }
}
